//! Plain HTTP to a gateway's or NATS's endpoints, without a client library:
//! the tests see the bytes the server sends.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// GETs `path` from a gateway and parses the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON body")
}

/// One HTTP/1.1 request to a gateway: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // HTTP/1.0, so that no server answers with a chunked body.
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}
