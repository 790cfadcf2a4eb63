//! gRPC-Web on the same port, as a browser sends it: HTTP/1.1, the message
//! framed in the body, the status in a trailer frame at the end of it; a
//! server stream too; and CORS only for the configured origins.

use std::time::Duration;

use partnerhub_tests::{Backend, ServiceSections, TestApp, raw::framed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED_ORIGIN: &str = "https://hub.example.com";

async fn app() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.grpc_web_cors_origins.0 = vec![ALLOWED_ORIGIN.to_owned()];
        settings.partner_change().stream.heartbeat_interval = Duration::from_millis(300);
    })
    .await
}

/// An HTTP/1.1 request on a new connection; returns what the server sent
/// within `wait` (all of it, if it closes the connection sooner).
async fn http1(app: &TestApp, head: &str, body: &[u8], wait: Duration) -> Vec<u8> {
    let mut connection = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    connection.write_all(head.as_bytes()).await.unwrap();
    connection.write_all(body).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, connection.read_to_end(&mut received)).await;
    received
}

fn grpc_web_post(path: &str, token: &str, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: partnerhub\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The call's status: in the headers (a trailers-only answer) or in the trailer frame.
fn has_status(response: &[u8], code: u8) -> bool {
    contains(response, format!("grpc-status: {code}\r\n").as_bytes())
        || contains(response, format!("grpc-status:{code}\r\n").as_bytes())
}

#[tokio::test]
async fn a_grpc_web_client_calls_unary_and_streaming_methods() {
    let app = app().await;
    let token = app.token("support:alice");

    // Unary: GetWaba of a WABA that does not exist answers NOT_FOUND (5).
    let request = framed(0, b"\x0a\x0ewaba-not-there");
    let response = http1(
        &app,
        &grpc_web_post("/partnerhub.account.v1.AccountService/GetWaba", &token, request.len()),
        &request,
        Duration::from_secs(5),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_lowercase().contains("content-type: application/grpc-web"), "{text}");
    assert!(has_status(&response, 5), "NOT_FOUND: {text}");

    // Malformed bytes over gRPC-Web are refused like over gRPC: INVALID_ARGUMENT (3).
    let garbage = framed(0, &[0xff; 11]);
    let response = http1(
        &app,
        &grpc_web_post("/partnerhub.account.v1.AccountService/GetWaba", &token, garbage.len()),
        &garbage,
        Duration::from_secs(5),
    )
    .await;
    assert!(has_status(&response, 3), "{}", String::from_utf8_lossy(&response));

    // Server streaming: the event stream sends a heartbeat message within a second.
    let watch = framed(0, b"");
    let response = http1(
        &app,
        &grpc_web_post(
            "/partnerhub.partnerchange.v1.PartnerChangeService/WatchPartnerChangeEvents",
            &token,
            watch.len(),
        ),
        &watch,
        Duration::from_secs(2),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_start = response.windows(4).position(|window| window == b"\r\n\r\n").unwrap() + 4;
    // Chunked: the first chunk's size line, then a data frame (flag 0) holding a heartbeat.
    let body = &response[body_start..];
    let first_chunk = body.windows(2).position(|window| window == b"\r\n").map(|end| &body[end + 2..]).unwrap();
    assert_eq!(first_chunk.first(), Some(&0), "a data frame arrived on the stream: {text}");
    assert!(!contains(&response, b"grpc-status:"), "still open: {text}");
}

#[tokio::test]
async fn cors_admits_only_the_configured_origins() {
    let app = app().await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /partnerhub.account.v1.AccountService/GetWaba HTTP/1.1\r\nHost: partnerhub\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let allowed = http1(&app, &preflight(ALLOWED_ORIGIN), b"", Duration::from_secs(5)).await;
    let allowed = String::from_utf8_lossy(&allowed).to_lowercase();
    assert!(allowed.contains(&format!("access-control-allow-origin: {ALLOWED_ORIGIN}")), "{allowed}");
    assert!(allowed.contains("access-control-allow-headers"), "{allowed}");

    let other = http1(&app, &preflight("https://evil.example.com"), b"", Duration::from_secs(5)).await;
    let other = String::from_utf8_lossy(&other).to_lowercase();
    assert!(!other.contains("access-control-allow-origin"), "{other}");
}
