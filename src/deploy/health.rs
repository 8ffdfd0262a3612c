//! The deploy's health check: `GET /health` of the service on the device, over plain HTTP,
//! retried until it answers 200 with the expected release version or the time is up.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{RecurError, Result};

/// One `GET` of `http://host:port/path`; the status and the body. A minimal HTTP/1.0 client
/// (the request is one line, the answer is read to the end), enough for `/health`.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| RecurError::Usage(format!("{url}: only http:// URLs are checked")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| RecurError::Usage(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| RecurError::Usage(format!("{url}: no address")))?;
    let io = |e: std::io::Error| RecurError::Usage(format!("{url}: {e}"));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    s.take(1 << 20).read_to_end(&mut answer).map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| RecurError::Usage(format!("{url}: not an HTTP answer")))?;
    Ok((status, body.to_string()))
}

/// Polls `url` until it answers 200 with `"version": version` (any version when `None`);
/// the last failure when `within` runs out, or at once when `gone` (asked every few seconds
/// while the service does not answer) says the service has exited, and why.
pub fn wait_healthy(
    url: &str,
    version: Option<&str>,
    within: Duration,
    gone: &mut dyn FnMut() -> Option<String>,
) -> Result<String> {
    let deadline = Instant::now() + within;
    let mut last_asked = Instant::now();
    let mut last;
    loop {
        last = match get(url, Duration::from_secs(3)) {
            Ok((200, body)) => {
                let seen: Option<String> = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("version")?.as_str().map(str::to_string));
                match version {
                    Some(v) if seen.as_deref() != Some(v) => format!(
                        "answers for version {}, not {v}",
                        seen.as_deref().unwrap_or("(none)")
                    ),
                    _ => return Ok(body),
                }
            }
            Ok((status, body)) => format!("status {status}: {}", body.trim()),
            Err(e) => e.to_string(),
        };
        if last_asked.elapsed() >= Duration::from_secs(2) {
            last_asked = Instant::now();
            if let Some(why) = gone() {
                return Err(RecurError::Usage(format!(
                    "{url} not healthy: the service exited: {why}"
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(RecurError::Usage(format!(
                "{url} not healthy within {} s: {last}",
                within.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
