//! `maglevd bench table`: build time of the Maglev table ([`crate::maglev::build`]) and of the
//! kernel-compatible `ip_vs_mh` table ([`crate::ipvs_mh::build`], tab_index 12 and 16) for N equal
//! backends. Each build is timed alone (`Instant` around one call, the result dropped outside the
//! timed region); min and median over `--repeat` builds.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use clap::Args;

use super::json::Json;
use super::stats::{median, min, parse_list};
use super::{BenchError, fmt_dur_ns};
use crate::ipvs_mh::{self, Family, MhDest};
use crate::maglev::{self, TableBackend};

/// Options of `maglevd bench table`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TableArgs {
    /// Maglev table size M (a prime ≥ 10 × the largest backend count).
    #[arg(long, default_value_t = 65537)]
    pub size: u32,
    /// Backend counts N to measure, comma-separated.
    #[arg(long, default_value = "3,100,1000", value_name = "N,N,...")]
    pub backends: String,
    /// Builds per measurement (min and median are reported).
    #[arg(long, default_value_t = 20)]
    pub repeat: u32,
}

impl TableArgs {
    /// Checks the options; returns the backend counts.
    pub fn validate(&self) -> Result<Vec<u32>, BenchError> {
        let ns = parse_list(&self.backends).map_err(|e| BenchError::Usage(format!("--backends: {e}")))?;
        if self.repeat == 0 {
            return Err(BenchError::Usage("--repeat must be at least 1".into()));
        }
        let largest = ns.iter().copied().max().unwrap_or(1);
        maglev::check_size(self.size, largest as usize).map_err(|e| BenchError::Usage(format!("--size: {e}")))?;
        Ok(ns)
    }
}

/// One measured table kind for one N.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub kind: String,
    pub size: u32,
    pub backends: u32,
    /// `None` when this kind cannot hold N backends.
    pub min_ns: Option<f64>,
    pub median_ns: Option<f64>,
}

fn time_it<T>(repeat: u32, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut v = Vec::with_capacity(repeat as usize);
    for _ in 0..repeat {
        let t = Instant::now();
        let r = black_box(f());
        v.push(t.elapsed().as_nanos() as f64);
        drop(r);
    }
    (min(&v).unwrap_or(0.0), median(&v).unwrap_or(0.0))
}

/// Runs the measurements.
pub fn measure(args: &TableArgs) -> Result<Vec<TableRow>, BenchError> {
    let ns = args.validate()?;
    let mut rows = Vec::new();
    for &n in &ns {
        let backends: Vec<TableBackend> =
            (0..n).map(|i| TableBackend { ip: Ipv4Addr::from(0x0a9e_0000 + i), weight: 1 }).collect();
        // One untimed build first: page in the allocator and the code.
        maglev::build(&backends, args.size).map_err(|e| BenchError::Setup(format!("maglev build: {e}")))?;
        let (lo, med) = time_it(args.repeat, || maglev::build(black_box(&backends), args.size));
        rows.push(TableRow {
            kind: "maglev".into(),
            size: args.size,
            backends: n,
            min_ns: Some(lo),
            median_ns: Some(med),
        });

        let dests: Vec<MhDest> =
            (0..n).map(|i| MhDest::new(IpAddr::V4(Ipv4Addr::from(0x0a9e_0000 + i)), 80, 1)).collect();
        for tab_index in [12u8, 16] {
            let m = ipvs_mh::table_size(tab_index).map_err(|e| BenchError::Setup(e.to_string()))?;
            let kind = format!("ipvs-mh tab_index {tab_index}");
            if n as usize > m as usize {
                rows.push(TableRow { kind, size: m, backends: n, min_ns: None, median_ns: None });
                continue;
            }
            ipvs_mh::build(Family::Inet, &dests, tab_index).map_err(|e| BenchError::Setup(e.to_string()))?;
            let (lo, med) = time_it(args.repeat, || ipvs_mh::build(Family::Inet, black_box(&dests), tab_index));
            rows.push(TableRow { kind, size: m, backends: n, min_ns: Some(lo), median_ns: Some(med) });
        }
    }
    Ok(rows)
}

/// Text table.
pub fn render(rows: &[TableRow], repeat: u32) -> String {
    let mut s = format!("table build time ({repeat} builds each, equal weights)\n");
    let _ = writeln!(s, "{:<20} {:>7} {:>9} {:>12} {:>12}", "table", "M", "backends", "min", "median");
    for r in rows {
        let f = |v: Option<f64>| v.map_or_else(|| "n/a (N > M)".to_string(), fmt_dur_ns);
        let _ =
            writeln!(s, "{:<20} {:>7} {:>9} {:>12} {:>12}", r.kind, r.size, r.backends, f(r.min_ns), f(r.median_ns));
    }
    s
}

/// JSON document.
pub fn to_json(rows: &[TableRow], repeat: u32) -> Json {
    let v: Vec<Json> = rows
        .iter()
        .map(|r| {
            Json::obj()
                .with("table", r.kind.as_str())
                .with("size", r.size)
                .with("backends", r.backends)
                .with("min_ns", r.min_ns)
                .with("median_ns", r.median_ns)
        })
        .collect();
    Json::obj().with("bench", "table").with("repeat", repeat).with("results", Json::Arr(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(size: u32, backends: &str, repeat: u32) -> TableArgs {
        TableArgs { size, backends: backends.into(), repeat }
    }

    #[test]
    fn validation() {
        assert_eq!(args(65537, "3,100,1000", 20).validate().unwrap(), vec![3, 100, 1000]);
        assert!(args(65536, "3", 1).validate().unwrap_err().to_string().contains("--size"));
        assert!(args(101, "100", 1).validate().is_err(), "M < 10 N");
        assert!(args(65537, "3", 0).validate().is_err());
        assert!(args(65537, "a", 1).validate().unwrap_err().to_string().contains("--backends"));
    }

    #[test]
    fn measures_small() {
        let rows = measure(&args(251, "3,5", 2)).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.min_ns.is_some() && r.min_ns <= r.median_ns));
        let text = render(&rows, 2);
        assert!(text.contains("maglev") && text.contains("ipvs-mh tab_index 16"), "{text}");
        assert!(to_json(&rows, 2).render().contains("\"backends\":5"));
    }
}
