//! The boundary, as a broken or hostile client meets it: bytes that are not a
//! well-framed request message are `INVALID_ARGUMENT` with an `ErrorInfo` (and
//! a `BadRequest` naming the field where the decoder knows it), never
//! `INTERNAL`, on every method; random bytes never crash the server.

use partnerhub_tests::{
    Backend, TestApp,
    raw::{call, framed, partnerhub_methods},
};
use prost_types::field_descriptor_proto::Type;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// What is wrong, the headers to send over gRPC's, the body, the expected reason.
type Case = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>, &'static str);

fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|violation| violation.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_malformed_request_on_every_method_is_invalid_argument() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let channel = app.channel_without_token();
    let max = app.settings.server.max_message_bytes;
    let mut oversized = vec![0];
    oversized.extend_from_slice(&(max as u32 + 1).to_be_bytes());
    let mut two_messages = framed(0, b"");
    two_messages.extend(framed(0, b""));
    let mut cut_short = framed(0, b"\x0a\x03abc");
    cut_short.truncate(7);

    let methods = partnerhub_methods();
    assert!(methods.len() >= 25, "every method of the three services: {}", methods.len());
    let mut checked = 0;
    for (path, input) in &methods {
        // A caller the method admits: its request is read (who comes before what).
        let mut token = None;
        for subject in ["support:alice", "service:partner-change", "partner:p1"] {
            let candidate = app.token(subject);
            if call(&channel, path, &candidate, &[], framed(0, &[0xff; 11])).await.code() != Code::PermissionDenied {
                token = Some(candidate);
                break;
            }
        }
        let token = token.unwrap_or_else(|| panic!("nobody may call {path}"));
        // What no method accepts, whatever its message.
        let mut cases: Vec<Case> = vec![
            ("no message", vec![], vec![], "INVALID_REQUEST"),
            ("a frame cut short", vec![], cut_short.clone(), "INVALID_REQUEST"),
            ("two messages", vec![], two_messages.clone(), "INVALID_REQUEST"),
            ("compressed-flag without grpc-encoding", vec![], framed(1, b""), "INVALID_REQUEST"),
            ("a compressed-flag of 3", vec![], framed(3, b""), "INVALID_REQUEST"),
            (
                "content-type application/json",
                vec![("content-type", "application/json")],
                b"{}".to_vec(),
                "INVALID_REQUEST",
            ),
            ("a message over the limit", vec![], oversized.clone(), "MESSAGE_TOO_LARGE"),
            ("random bytes", vec![], framed(0, &[0xff; 11]), "INVALID_REQUEST"),
            ("a length past the end", vec![], framed(0, b"\x0a\x10abc"), "INVALID_REQUEST"),
        ];
        // What the message's field 1 refuses.
        let first = input.field.iter().find(|field| field.number() == 1);
        if first.is_some() {
            cases.push((
                "a wrong wire type for field 1",
                vec![],
                framed(0, b"\x0d\x00\x00\x00\x00"),
                "INVALID_REQUEST",
            ));
        }
        let string_field = first.filter(|field| {
            field.r#type() == Type::String && field.label() != prost_types::field_descriptor_proto::Label::Repeated
        });
        if string_field.is_some() {
            cases.push(("invalid UTF-8 in field 1", vec![], framed(0, b"\x0a\x02\xff\xfe"), "INVALID_REQUEST"));
        }
        for (what, headers, body, expected_reason) in cases {
            let status = call(&channel, path, &token, &headers, body).await;
            assert_eq!(
                (status.code(), reason(&status).as_str()),
                (Code::InvalidArgument, expected_reason),
                "{path} with {what}: {status:?}"
            );
            checked += 1;
        }
        if let Some(field) = string_field {
            // prost names a field of a oneof by the oneof.
            let named = match field.oneof_index {
                Some(index) => input.oneof_decl[index as usize].name(),
                None => field.name(),
            };
            let status = call(&channel, path, &token, &[], framed(0, b"\x0a\x02\xff\xfe")).await;
            assert_eq!(bad_fields(&status), [named.to_owned()], "{path}: the violation names the field");
        }
    }
    assert!(checked > 250, "{checked} cases");
    // Still serving.
    let support = app.token("support:alice");
    let alive =
        call(&channel, "/partnerhub.account.v1.AccountService/GetWaba", &support, &[], framed(0, b"\x0a\x06waba-1"))
            .await;
    assert_eq!(alive.code(), Code::NotFound, "{alive:?}");
}

/// Random bytes, framed or not, to random methods: never `INTERNAL` or
/// `UNKNOWN`, and the server keeps serving.
#[test]
fn random_bytes_never_answer_internal() {
    use proptest::{
        collection::vec,
        prelude::*,
        sample::Index,
        test_runner::{Config, TestRunner},
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(TestApp::spawn(Backend::Sqlite));
    let channel = app.channel_without_token();
    let token = app.token("service:partner-change");
    let methods = partnerhub_methods();
    let mut runner = TestRunner::new(Config { cases: 512, failure_persistence: None, ..Config::default() });
    let strategy = (any::<Index>(), vec(any::<u8>(), 0..96), any::<bool>());
    runner
        .run(&strategy, |(method, bytes, frame)| {
            let (path, _) = &methods[method.index(methods.len())];
            let body = if frame { framed(0, &bytes) } else { bytes };
            let status = runtime.block_on(call(&channel, path, &token, &[], body));
            prop_assert!(!matches!(status.code(), Code::Internal | Code::Unknown), "{path}: {status:?}");
            Ok(())
        })
        .unwrap();
    let alive = runtime.block_on(call(
        &channel,
        "/partnerhub.account.v1.AccountService/GetWaba",
        &token,
        &[],
        framed(0, b"\x0a\x06waba-1"),
    ));
    assert_eq!(alive.code(), Code::NotFound, "{alive:?}");
    drop(app);
}

/// Who before what: a kind of subject that may never call a method gets
/// `PERMISSION_DENIED` before anything of its request is looked at, so an
/// empty request from it learns nothing of the method's rules; one that may
/// gets past the gate (here: to the validation of its empty request). The
/// migration calls are the partner-change service's alone.
#[tokio::test]
async fn a_caller_that_may_never_call_a_method_is_denied_before_its_request_is_read() {
    const C: &str = "client:c1";
    const P: &str = "partner:p1";
    const S: &str = "support:alice";
    const O: &str = "service:messaging";
    const M: &str = "service:partner-change";
    const ALL: &[&str] = &[C, P, S, O, M];
    // Who may call each method at all (../shared/SPEC.md, "API sketch" and "Identity").
    let may: &[(&str, &[&str])] = &[
        ("CreatePartner", &[S]),
        ("GetPartner", ALL),
        ("UpdatePartnerSettings", &[P, S]),
        ("CreateClient", &[S]),
        ("GetClient", &[C, S, O, M]),
        ("UpdateCompanyInfo", &[C, S]),
        ("AddPaymentMethod", &[C, S]),
        ("SetClientLegacy", &[S]),
        ("CreateWaba", &[S, O, M]),
        ("AddPhoneNumber", &[S, O, M]),
        ("GetWaba", ALL),
        ("ListWabas", ALL),
        ("GetWabaContext", &[S, O, M]),
        ("TransferWaba", &[M]),
        ("PreviewPartnerChange", &[C, S]),
        ("SubmitPartnerChange", &[C, S]),
        ("GetPartnerChange", ALL),
        ("GetPartnerChangeHistory", ALL),
        ("ListPartnerChanges", ALL),
        ("ApprovePartnerChange", &[P]),
        ("RejectPartnerChange", &[P]),
        ("CancelPartnerChange", &[C, S]),
        ("ReschedulePartnerChange", &[C, S]),
        ("RetryPartnerChange", &[S]),
        ("WatchPartnerChangeEvents", ALL),
        ("SetPartnerPermissions", &[C, S]),
        ("ListPartnerPermissions", &[C, P, S]),
        ("CheckPermission", &[O, M]),
        ("RevokePartnerPermissions", &[M]),
        ("GrantPartnerPermissions", &[M]),
        ("CreateWebhookEndpoint", &[C, P, S]),
        ("GetWebhookEndpoint", &[C, P, S]),
        ("ListWebhookEndpoints", &[C, P, S]),
        ("UpdateWebhookEndpoint", &[C, P, S]),
        ("DeleteWebhookEndpoint", &[C, P, S]),
        ("RotateWebhookSecret", &[C, P, S]),
        ("ListWebhookDeliveries", &[C, P, S]),
        ("RedeliverWebhookEvent", &[C, P, S]),
    ];
    let app = TestApp::spawn(Backend::Sqlite).await;
    let channel = app.channel_without_token();
    let methods = partnerhub_methods();
    assert_eq!(methods.len(), may.len(), "every method is in the table");
    for (path, _) in &methods {
        let name = path.rsplit('/').next().unwrap();
        let allowed =
            may.iter().find(|(method, _)| *method == name).unwrap_or_else(|| panic!("{name} is not in the table")).1;
        for subject in ALL {
            let status = call(&channel, path, &app.token(subject), &[], framed(0, b"")).await;
            if allowed.contains(subject) {
                assert_ne!(status.code(), Code::PermissionDenied, "{subject} may call {name}: {status:?}");
                assert!(!matches!(status.code(), Code::Internal | Code::Unknown), "{subject} on {name}: {status:?}");
            } else {
                assert_eq!(
                    (status.code(), reason(&status).as_str()),
                    (Code::PermissionDenied, "SUBJECT_NOT_ALLOWED"),
                    "{subject} may not call {name}"
                );
            }
        }
    }
}

/// Timestamps outside the years 1 to 9999 are refused, naming the field sent;
/// every violation names the field the caller set.
#[tokio::test]
async fn out_of_range_timestamps_and_misplaced_fields_name_the_field_sent() {
    use partnerhub_proto::partnerchange::v1 as pc;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let support = app.partner_change("support:alice");
    let year_10000 = prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 };
    let year_0 = prost_types::Timestamp { seconds: -62_135_596_801, nanos: 0 };
    let cases = [
        ("created_after", pc::ListPartnerChangesRequest { created_after: Some(year_10000), ..Default::default() }),
        ("created_before", pc::ListPartnerChangesRequest { created_before: Some(year_0), ..Default::default() }),
        (
            "scheduled_before",
            pc::ListPartnerChangesRequest { scheduled_before: Some(year_10000), ..Default::default() },
        ),
    ];
    for (field, mut request) in cases {
        request.client_id = "client-1".to_owned();
        let status = support.clone().list_partner_changes(request).await.unwrap_err();
        assert_eq!((status.code(), bad_fields(&status)), (Code::InvalidArgument, vec![field.to_owned()]), "{status:?}");
    }
    let as_client = app.partner_change("client:c1");
    let status = as_client
        .clone()
        .list_partner_changes(pc::ListPartnerChangesRequest {
            partner_id: "partner-1".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((status.code(), bad_fields(&status)), (Code::InvalidArgument, vec!["partner_id".to_owned()]));
}

/// 200 connections that never send anything are closed once the preface
/// deadline passes, while a well-behaved client is served throughout.
#[tokio::test]
async fn silent_connections_are_closed_while_a_real_client_is_served() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.preface_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(app.addr()).await.unwrap());
    }
    let started = std::time::Instant::now();
    let channel = app.channel_without_token();
    let support = app.token("support:alice");
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let status = call(
            &channel,
            "/partnerhub.account.v1.AccountService/GetWaba",
            &support,
            &[],
            framed(0, b"\x0a\x06waba-1"),
        )
        .await;
        assert_eq!(status.code(), Code::NotFound, "served throughout: {status:?}");
    }
    for mut connection in silent {
        // The server speaks first (its SETTINGS frame); then it closes: end of stream, or reset.
        let mut sent_by_server = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(5), connection.read_to_end(&mut sent_by_server)).await;
        assert!(matches!(closed, Ok(Ok(_)) | Ok(Err(_))), "a silent connection is still open: {closed:?}");
    }
}

/// The framing check reads a whole request before tonic does; that is right
/// only while every Partner Hub method takes exactly one request message.
#[test]
fn no_partnerhub_method_streams_requests() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(partnerhub_proto::FILE_DESCRIPTOR_SET).unwrap();
    let streaming: Vec<String> = set
        .file
        .iter()
        .flat_map(|file| file.service.iter())
        .flat_map(|service| service.method.iter())
        .filter(|method| method.client_streaming())
        .map(|method| method.name().to_owned())
        .collect();
    assert!(streaming.is_empty(), "client-streaming methods need the framing layer changed: {streaming:?}");
}
