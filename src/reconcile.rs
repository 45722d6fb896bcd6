//! Making a set of things in place (routes, files) equal to the set wanted, one change at a time,
//! where a change can fail and is then retried at the next call.

use std::collections::BTreeSet;

/// A change [`reconcile`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Remove this element: it is in place and not wanted.
    Remove,
    /// Add this element: it is wanted and not in place.
    Add,
}

/// Makes `have` equal to `want`: `apply(x, Remove)` for each element of `have` not in `want`
/// (removals first), then `apply(x, Add)` for each element of `want` not in `have`, in order.
/// An element whose change failed stays as it was in `have`, so the next call tries it again;
/// every change is tried, and the first error is returned.
pub fn reconcile<T: Ord + Copy, E>(
    have: &mut BTreeSet<T>,
    want: &BTreeSet<T>,
    mut apply: impl FnMut(T, Change) -> Result<(), E>,
) -> Result<(), E> {
    let mut first = None;
    let gone: Vec<T> = have.difference(want).copied().collect();
    for x in gone {
        match apply(x, Change::Remove) {
            Ok(()) => {
                have.remove(&x);
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let new: Vec<T> = want.difference(have).copied().collect();
    for x in new {
        match apply(x, Change::Add) {
            Ok(()) => {
                have.insert(x);
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u8]) -> BTreeSet<u8> {
        v.iter().copied().collect()
    }

    #[test]
    fn removals_then_additions_and_failures_are_kept_for_the_next_call() {
        let mut have = set(&[1, 2, 3]);
        let mut calls = Vec::new();
        let r = reconcile(&mut have, &set(&[2, 4, 5]), |x, c| {
            calls.push((x, c));
            if x == 3 || x == 5 { Err(format!("failed {x}")) } else { Ok(()) }
        });
        assert_eq!(r, Err("failed 3".to_string()), "the first error");
        assert_eq!(calls, [(1, Change::Remove), (3, Change::Remove), (4, Change::Add), (5, Change::Add)]);
        assert_eq!(have, set(&[2, 3, 4]), "3 still in place, 5 not added");
        // The next call retries exactly those.
        calls.clear();
        assert_eq!(
            reconcile(&mut have, &set(&[2, 4, 5]), |x, c| -> Result<(), String> {
                calls.push((x, c));
                Ok(())
            }),
            Ok(())
        );
        assert_eq!(calls, [(3, Change::Remove), (5, Change::Add)]);
        assert_eq!(have, set(&[2, 4, 5]));
        // Nothing to do: no call.
        assert_eq!(
            reconcile(&mut have, &set(&[2, 4, 5]), |_, _| -> Result<(), String> { panic!("no change") }),
            Ok(())
        );
    }
}
