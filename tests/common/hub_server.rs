//! A local server in the Hugging Face hub's URL layout and headers, for the tests that
//! download: files by URL path, the LFS ETag (the body's SHA-256), ranges, and breaks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The commit every served file claims.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// How the server breaks the first download of a file body, if at all.
#[derive(Clone, Copy)]
pub enum Cut {
    Never,
    /// Announce the whole length, send this many bytes, close.
    WithLength(usize),
    /// Announce no length, send this many bytes, close: the end looks like a complete body.
    WithoutLength(usize),
}

/// What a server saw: connections, and the first byte asked for by each body request.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub body_starts: Mutex<Vec<usize>>,
    /// Every `Authorization` header received.
    pub authorization: Mutex<Vec<String>>,
}

/// Serves `files` (URL path → bytes) as the hub does, with the LFS ETag (the body's SHA-256);
/// handles at most `limit` connections, then stops; breaks the first body download as `cut` says.
pub fn serve(files: Vec<(String, Vec<u8>)>, limit: usize, cut: Cut) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut cut = cut;
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { continue };
            log.requests.fetch_add(1, Ordering::SeqCst);
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut range_start = 0usize;
            let mut range_end = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    log.authorization
                        .lock()
                        .unwrap()
                        .push(line.trim_end().to_string());
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                    range_start = a.parse().unwrap_or(0);
                    range_end = b.parse::<usize>().ok();
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            let response = match files.iter().find(|(p, _)| *p == path) {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                Some((_, body)) => {
                    let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                    let part = &body[range_start..=end];
                    let etag = format!("{:x}", Sha256::digest(body));
                    let head = |length: bool| {
                        let length = if length {
                            format!("Content-Length: {}\r\n", part.len())
                        } else {
                            String::new()
                        };
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nX-Linked-Etag: \"{etag}\"\r\nETag: \"{etag}\"\r\n\
                             X-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {range_start}-{end}/{}\r\n\
                             {length}Connection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes()
                    };
                    let is_body = range_end.is_none();
                    if is_body {
                        log.body_starts.lock().unwrap().push(range_start);
                    }
                    let (mut r, sent) = match (is_body, cut) {
                        (true, Cut::WithLength(n)) => (head(true), &part[..n]),
                        (true, Cut::WithoutLength(n)) => (head(false), &part[..n]),
                        _ => (head(true), part),
                    };
                    if is_body {
                        cut = Cut::Never;
                    }
                    r.extend_from_slice(sent);
                    r
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    (endpoint, seen)
}
