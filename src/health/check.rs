//! The `tcp` and `http` checks: kernel TCP connections to the backend's real IP, leaving through
//! the egress interface (`SO_BINDTODEVICE`), closed with a RST (`SO_LINGER` 0, as HAProxy's checks
//! do) so no TIME_WAIT piles up on the frontend.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The most bytes of an HTTP response read: the status line must be in them.
pub const MAX_HTTP_RESPONSE: usize = 4096;

fn connect(egress: &str, addr: SocketAddr, timeout: Duration) -> Result<socket2::Socket, String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    s.bind_device(Some(egress.as_bytes())).map_err(|e| format!("SO_BINDTODEVICE {egress}: {e}"))?;
    s.set_linger(Some(Duration::ZERO)).map_err(|e| format!("SO_LINGER: {e}"))?;
    s.connect_timeout(&addr.into(), timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            format!("connect to {addr}: no answer within {} ms", timeout.as_millis())
        } else {
            format!("connect to {addr}: {e}")
        }
    })?;
    Ok(s)
}

/// A TCP connection to `addr` completes within `timeout`.
pub fn tcp(egress: &str, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    connect(egress, addr, timeout).map(drop)
}

/// The request an `http` check sends.
pub fn http_request(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: maglevd-health\r\nConnection: close\r\n\r\n")
}

/// The `Host` header for a backend when the configuration gives none: its IP, and the port unless
/// it is 80.
pub fn default_host(ip: IpAddr, port: u16) -> String {
    let ip = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if port == 80 { ip } else { format!("{ip}:{port}") }
}

/// The status code of an HTTP/1.x status line at the start of `resp`, once the line is complete.
pub fn status_code(resp: &[u8]) -> Option<Result<u16, String>> {
    let end = resp.windows(2).position(|w| w == b"\r\n").or_else(|| resp.iter().position(|&b| b == b'\n'))?;
    let line = String::from_utf8_lossy(&resp[..end]);
    let mut parts = line.split(' ');
    let ok = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code.parse::<u16>().ok(),
        _ => None,
    };
    Some(ok.ok_or_else(|| format!("not an HTTP status line: {:?}", line.chars().take(80).collect::<String>())))
}

/// `GET path` on `addr` answers `status` within `timeout` (connect and response together).
pub fn http(
    egress: &str,
    addr: SocketAddr,
    path: &str,
    host: &str,
    status: u16,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let s = connect(egress, addr, timeout)?;
    let mut s = std::net::TcpStream::from(s);
    let left = |what: &str| {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() { Err(format!("{what}: no answer within {} ms", timeout.as_millis())) } else { Ok(d) }
    };
    s.set_write_timeout(Some(left("request")?)).map_err(|e| e.to_string())?;
    s.write_all(http_request(path, host).as_bytes()).map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = [0u8; MAX_HTTP_RESPONSE];
    let mut n = 0;
    loop {
        if let Some(code) = status_code(&buf[..n]) {
            let code = code?;
            return if code == status { Ok(()) } else { Err(format!("HTTP status {code} (expected {status})")) };
        }
        if n == buf.len() {
            return Err(format!("no status line in the first {MAX_HTTP_RESPONSE} bytes"));
        }
        s.set_read_timeout(Some(left("response")?)).map_err(|e| e.to_string())?;
        match s.read(&mut buf[n..]) {
            Ok(0) => return Err("connection closed before a status line".into()),
            Ok(k) => n += k,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("response: no answer within {} ms", timeout.as_millis()));
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_a_host_header() {
        assert_eq!(
            http_request("/healthz", "10.0.0.1"),
            "GET /healthz HTTP/1.0\r\nHost: 10.0.0.1\r\nUser-Agent: maglevd-health\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(default_host("10.0.0.1".parse().unwrap(), 80), "10.0.0.1");
        assert_eq!(default_host("10.0.0.1".parse().unwrap(), 8080), "10.0.0.1:8080");
        assert_eq!(default_host("2001:db8::1".parse().unwrap(), 80), "[2001:db8::1]");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Some(Ok(200)));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(Ok(503)));
        assert_eq!(status_code(b"HTTP/1.1 204\r\n"), Some(Ok(204)));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None, "incomplete: read on");
        assert!(matches!(status_code(b"SSH-2.0-OpenSSH_9.6\r\n"), Some(Err(_))));
        assert!(matches!(status_code(b"HTTP/1.1 2000 OK\r\n"), Some(Err(_))));
        assert!(matches!(status_code(b"\xff\xfe\r\n"), Some(Err(_))));
    }

    /// A real server on loopback: the status is compared, a wrong one is named, the read is
    /// bounded.
    #[test]
    fn http_against_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answers: [&[u8]; 3] = [b"HTTP/1.1 200 OK\r\n\r\nhi", b"HTTP/1.1 503 Busy\r\n\r\n", &[b'x'; 8000]];
        let server = std::thread::spawn(move || {
            for a in answers {
                let (mut c, _) = listener.accept().unwrap();
                let mut req = [0u8; 512];
                let n = c.read(&mut req).unwrap();
                assert!(String::from_utf8_lossy(&req[..n]).contains("Host: example\r\n"));
                let _ = c.write_all(a);
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(http("lo", addr, "/", "example", 200, t), Ok(()));
        assert_eq!(http("lo", addr, "/", "example", 200, t), Err("HTTP status 503 (expected 200)".into()));
        assert_eq!(http("lo", addr, "/", "example", 200, t), Err("no status line in the first 4096 bytes".into()));
        server.join().unwrap();
        // Nothing listens any more: refused.
        let e = tcp("lo", addr, t).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
}
