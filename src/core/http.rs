//! The first bytes of a connection: a WebSocket upgrade on `/ws`, or a plain GET for the
//! browser page (`/`, `/callme.js`). The whole of it, up to an established WebSocket, has to
//! finish within `handshake_timeout_ms`.

use std::time::Duration;

use super::tls::Conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The browser client: a page whose script performs the 19 steps.
const PAGE_HTML: &str = include_str!("web/index.html");
const PAGE_JS: &str = include_str!("web/callme.js");

/// The longest request head read before deciding.
const MAX_HEAD: usize = 4096;

/// What a connection asks for.
pub(super) enum Route {
    /// A WebSocket upgrade.
    WebSocket,
    /// A page, by path.
    Page(String),
}

/// Waits (without consuming anything) for the request head, then routes it. `None` when the
/// peer closes first or sends a head larger than [`MAX_HEAD`] that is no upgrade.
pub(super) async fn route(stream: &mut Conn) -> Option<Route> {
    let mut head = vec![0u8; MAX_HEAD];
    loop {
        let n = stream.peek(&mut head).await.ok()?;
        if n == 0 {
            return None;
        }
        let complete = head[..n].windows(4).any(|w| w == b"\r\n\r\n");
        if complete || n == head.len() {
            let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
            if text.contains("upgrade: websocket") {
                return Some(Route::WebSocket);
            }
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
            return complete.then_some(Route::Page(path));
        }
        // Part of the head is there: wait for the rest (peek does not wait for new bytes).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves the browser page.
pub(super) async fn serve_page(mut stream: Conn, path: &str) {
    let mut buf = [0u8; MAX_HEAD];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    let (status, ctype, body) = match path.split('?').next().unwrap_or("/") {
        "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", PAGE_HTML),
        "/callme.js" => ("200 OK", "text/javascript; charset=utf-8", PAGE_JS),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
