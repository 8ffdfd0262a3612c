//! One client connection: a reader that parses request lines and queues them for the model
//! worker, and a writer that sends the replies back in the order the requests came. Requests
//! are pipelined: a client may send many lines before it reads any reply.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::protocol::{Reply, Request, MAX_LINE};
use super::worker::Job;
use super::Shared;

/// Serves one connection until the client closes it, sends a line that is too long, or the
/// service drains (then every request read so far is still answered).
pub fn run(socket: TcpStream, peer: SocketAddr, shared: &Shared) {
    let open = shared.metrics.connections.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::debug!("{peer}: connected ({open} open)");
    serve(socket, shared);
    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!("{peer}: closed");
}

fn serve(socket: TcpStream, shared: &Shared) {
    // Short read timeouts let the reader notice a drain.
    if socket.set_nonblocking(false).is_err()
        || socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return;
    }
    let _ = socket.set_nodelay(true);
    let Ok(write_half) = socket.try_clone() else {
        return;
    };
    let (reply_tx, reply_rx) = mpsc::channel::<String>();
    let writer = std::thread::spawn(move || write_replies(write_half, reply_rx));
    let jobs = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut reader = BufReader::new(socket);
    let mut line: Vec<u8> = Vec::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(room).read_until(b'\n', &mut line) {
            // End of input: answer a last line without its newline, then stop.
            Ok(0) => {
                submit(&line, &jobs, &reply_tx);
                break;
            }
            Ok(_) if line.last() == Some(&b'\n') => {
                submit(&line, &jobs, &reply_tx);
                line.clear();
            }
            Ok(_) if line.len() > MAX_LINE => {
                let reason = format!("request line longer than {MAX_LINE} bytes; closing");
                let _ = reply_tx.send(Reply::error(None, reason).to_line());
                break;
            }
            // The input ended in the middle of a line; the next read says so.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(reply_tx);
    drop(jobs);
    let _ = writer.join();
}

/// Parses one line and queues it for the worker; a line that cannot be read is queued as a
/// refusal, so that its error reply comes after the replies to earlier lines.
fn submit(line: &[u8], jobs: &mpsc::Sender<Job>, replies: &mpsc::Sender<String>) {
    let received = Instant::now();
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match Request::parse(text) {
        Ok((stream, command)) => {
            let job = Job::Request {
                stream,
                command,
                received,
                reply: replies.clone(),
            };
            if jobs.send(job).is_err() {
                let _ = replies.send(Reply::error(None, "the service is stopping").to_line());
            }
        }
        Err((stream, reason)) => {
            // Every earlier request of this connection may still be queued at the worker:
            // send the error through the worker too so that replies stay in order.
            let job = Job::Request {
                stream: stream.unwrap_or_default(),
                command: super::protocol::Command::Refuse(reason),
                received,
                reply: replies.clone(),
            };
            let _ = jobs.send(job);
        }
    }
}

/// Writes reply lines until every sender is gone, flushing whenever the queue runs dry.
fn write_replies(socket: TcpStream, replies: mpsc::Receiver<String>) {
    let mut out = BufWriter::new(socket);
    while let Ok(first) = replies.recv() {
        let mut line = Some(first);
        while let Some(l) = line {
            if out.write_all(l.as_bytes()).is_err() || out.write_all(b"\n").is_err() {
                return;
            }
            line = replies.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
    let _ = out.flush();
}
