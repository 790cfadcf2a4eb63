//! What an operator sees of one partner change, with each service in its own
//! process (`deploy/cluster.sh`, one replica each): the spans of all three
//! services in one trace with the expected parents, the metrics endpoint's
//! counters, and log lines that carry the trace and request IDs but never a token.

use std::time::Duration;

use partnerhub_proto::{partnerchange::v1 as pc, permissions::v1::CheckPermissionRequest};
use partnerhub_tests::{
    Deployment,
    cluster::{Cluster, sample},
    eventually,
    otlp::{OtlpReceiver, ReceivedSpan},
};
use tonic::Request;

use crate::fixtures::{scenario, wait_for_state};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn with_traceparent<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partner_change_is_one_trace_with_metrics_and_logs_to_match() {
    let receiver = OtlpReceiver::start().await;
    let cluster = Cluster::start(
        1,
        &[
            ("PARTNERHUB__TELEMETRY__OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("PARTNERHUB__LOG__FORMAT", "json"),
        ],
    )
    .await;
    let view = cluster.view("account-1", "partner-change-1", "permissions-1");
    let s = scenario(&view, false).await;
    s.grant(&view, &s.source.partner_id, &s.waba.phone_numbers).await;

    // A webhook endpoint of the destination: its deliveries join the change's trace.
    let hooks =
        partnerhub_tests::http::HttpServer::start(None, |_| async { (http::StatusCode::OK, String::new()) }).await;
    cluster
        .webhooks("webhooks-1", &s.destination_subject())
        .create_webhook_endpoint(partnerhub_proto::webhooks::v1::CreateWebhookEndpointRequest {
            owner: None,
            url: format!("{}/hook", hooks.base_url),
            description: String::new(),
        })
        .await
        .unwrap();

    // A subscriber following the events live (for the stream's metrics).
    let mut watching = view
        .partner_change("support:ops")
        .watch_partner_change_events(pc::WatchPartnerChangeEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // The calling service's own span: the trace the partner change joins.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span_id}-01");
    let submitted = view
        .partner_change(&s.client_subject())
        .submit_partner_change(with_traceparent(s.submit_request("traced"), &traceparent))
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    let id = submitted.partner_change_id;
    view.partner_change(&s.destination_subject())
        .approve_partner_change(with_traceparent(
            pc::ApprovePartnerChangeRequest { partner_change_id: id.clone() },
            &traceparent,
        ))
        .await
        .unwrap();
    wait_for_state(&view, &id, pc::PartnerChangeState::Completed).await;
    let mut live_events = 0;
    while live_events < 4 {
        let message = tokio::time::timeout(Duration::from_secs(10), watching.message()).await.unwrap().unwrap();
        if let Some(pc::watch_partner_change_events_response::Kind::Event(_)) = message.and_then(|message| message.kind)
        {
            live_events += 1;
        }
    }

    // --- Traces ---
    let span_named = |spans: &[ReceivedSpan], service: &str, name: &str, kind: Option<i32>| -> Option<ReceivedSpan> {
        let mut found = spans
            .iter()
            .filter(|span| span.service == service && span.name == name && kind.is_none_or(|kind| span.kind == kind));
        let first = found.next().cloned();
        assert!(found.next().is_none(), "more than one {name} span from {service}");
        first
    };
    let pc_service = "partnerhub-partner-change";
    let revoke = "partnerhub.permissions.v1.PermissionsService/RevokePartnerPermissions";
    let transfer = "partnerhub.account.v1.AccountService/TransferWaba";
    let spans = eventually("every span of the partner change to arrive", Duration::from_secs(30), || async {
        let spans: Vec<ReceivedSpan> = receiver.spans().into_iter().filter(|span| span.trace_id == trace_id).collect();
        let complete = span_named(&spans, "partnerhub-permissions", revoke, Some(SERVER)).is_some()
            && span_named(&spans, "partnerhub-account", transfer, Some(SERVER)).is_some()
            && span_named(&spans, pc_service, "migration", None).is_some();
        complete.then_some(spans)
    })
    .await;
    // Each of the four events' webhook deliveries, in the same trace.
    eventually("the webhook deliveries' spans", Duration::from_secs(30), || async {
        let deliveries = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id && span.service == "partnerhub-webhooks")
            .filter(|span| span.name == "webhook delivery")
            .count();
        (deliveries >= 4).then_some(())
    })
    .await;
    let one = |service: &str, name: &str, kind: Option<i32>| {
        span_named(&spans, service, name, kind).unwrap_or_else(|| panic!("no {name} span from {service}: {spans:#?}"))
    };
    let submit = one(pc_service, "partnerhub.partnerchange.v1.PartnerChangeService/SubmitPartnerChange", Some(SERVER));
    let approve =
        one(pc_service, "partnerhub.partnerchange.v1.PartnerChangeService/ApprovePartnerChange", Some(SERVER));
    let migration = one(pc_service, "migration", None);
    let transfer_step = one(pc_service, "transfer", None);
    let transfer_call = one(pc_service, transfer, Some(CLIENT));
    let transfer_served = one("partnerhub-account", transfer, Some(SERVER));
    let permissions_step = one(pc_service, "permissions", None);
    let revoke_call = one(pc_service, revoke, Some(CLIENT));
    let revoke_served = one("partnerhub-permissions", revoke, Some(SERVER));
    // Both client calls hang under the caller's span; the migration under the
    // approval that set it going; each step's calls under the step, and each
    // service's handling under the call that reached it.
    assert_eq!(submit.parent_span_id, caller_span_id);
    assert_eq!(approve.parent_span_id, caller_span_id);
    assert_eq!(migration.parent_span_id, approve.span_id);
    assert_eq!(transfer_step.parent_span_id, migration.span_id);
    assert_eq!(transfer_call.parent_span_id, transfer_step.span_id);
    assert_eq!(transfer_served.parent_span_id, transfer_call.span_id);
    assert_eq!(permissions_step.parent_span_id, migration.span_id);
    assert_eq!(revoke_call.parent_span_id, permissions_step.span_id);
    assert_eq!(revoke_served.parent_span_id, revoke_call.span_id);
    // The submit's own look-up of the WABA reached the account service in the same trace.
    let get_waba = "partnerhub.account.v1.AccountService/GetWabaContext";
    assert!(
        spans.iter().any(|span| span.service == "partnerhub-account"
            && span.name == get_waba
            && spans.iter().any(|call| call.span_id == span.parent_span_id && call.parent_span_id == submit.span_id)),
        "the submit's GetWabaContext is not under it: {spans:#?}"
    );

    // --- Metrics ---
    let refused = view
        .partner_change("support:ops")
        .get_partner_change(pc::GetPartnerChangeRequest { partner_change_id: "pc-unknown".to_owned() })
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::NotFound);
    view.permissions("service:messaging")
        .check_permission(CheckPermissionRequest {
            partner_id: s.destination.partner_id.clone(),
            phone_number: s.waba.phone_numbers[0].clone(),
        })
        .await
        .unwrap();
    let partner_change = cluster.scrape("partner-change-1").await;
    // The series of calls served (`server`) or made (`client`) by method and status.
    let calls = |side: &str, service: &str, method: &str, code: &str| {
        format!(
            r#"partnerhub_rpc_{side}_calls_total{{service="partnerhub.{service}",method="{method}",code="{code}"}}"#
        )
    };
    let partner_changes = "partnerchange.v1.PartnerChangeService";
    let accounts = "account.v1.AccountService";
    assert_eq!(sample(&partner_change, &calls("server", partner_changes, "SubmitPartnerChange", "OK")), 1.0);
    assert_eq!(sample(&partner_change, &calls("server", partner_changes, "ApprovePartnerChange", "OK")), 1.0);
    assert_eq!(sample(&partner_change, &calls("server", partner_changes, "GetPartnerChange", "NOT_FOUND")), 1.0);
    assert_eq!(sample(&partner_change, &calls("client", accounts, "TransferWaba", "OK")), 1.0);
    assert_eq!(
        sample(&partner_change, r#"partnerhub_partner_change_saga_steps_total{step="transfer",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        sample(&partner_change, r#"partnerhub_partner_change_saga_steps_total{step="permissions",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        sample(&partner_change, r#"partnerhub_partner_change_saga_step_duration_seconds_count{step="transfer"}"#),
        1.0
    );
    // This test's subscriber, and the webhooks service's follower of the stream.
    assert_eq!(sample(&partner_change, "partnerhub_partner_change_event_stream_subscribers"), 2.0);
    assert!(
        sample(&partner_change, "partnerhub_partner_change_event_stream_delivery_lag_seconds_count") >= 4.0,
        "{partner_change}"
    );
    let account = cluster.scrape("account-1").await;
    assert_eq!(sample(&account, &calls("server", accounts, "TransferWaba", "OK")), 1.0, "{account}");
    let permissions = cluster.scrape("permissions-1").await;
    let checks = sample(&permissions, r#"partnerhub_permissions_checks_total{answered_from="cache"}"#)
        + sample(&permissions, r#"partnerhub_permissions_checks_total{answered_from="database"}"#);
    assert_eq!(checks, 1.0, "{permissions}");
    assert!(sample(&permissions, "partnerhub_permissions_cache_invalidation_delay_seconds_count") >= 1.0);
    let webhooks = cluster.scrape("webhooks-1").await;
    assert!(sample(&webhooks, r#"partnerhub_webhooks_attempts_total{outcome="delivered"}"#) >= 4.0, "{webhooks}");
    assert!(sample(&webhooks, "partnerhub_webhooks_attempt_duration_seconds_count") >= 4.0, "{webhooks}");
    assert!(sample(&webhooks, "partnerhub_webhooks_delivery_delay_seconds_count") >= 4.0, "{webhooks}");
    for gauge in ["partnerhub_webhooks_queue_depth", "partnerhub_webhooks_oldest_due_seconds"] {
        assert!(webhooks.contains(gauge), "{gauge}: {webhooks}");
    }
    // Each service's series are registered by the service: a process exports only its own.
    assert!(!permissions.contains("partnerhub_partner_change_"), "{permissions}");
    assert!(!account.contains("partnerhub_permissions_"), "{account}");
    // The requests-by-state gauge is refreshed from the database every few seconds.
    eventually("the state gauge to count the completed request", Duration::from_secs(15), || async {
        let scraped = cluster.scrape("partner-change-1").await;
        (sample(&scraped, r#"partnerhub_partner_change_requests{state="COMPLETED"}"#) == 1.0).then_some(())
    })
    .await;

    // --- Logs ---
    let log = std::fs::read_to_string(&cluster.member("partner-change-1").log).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let rpc_span = |line: &serde_json::Value| -> Option<serde_json::Value> {
        line["spans"].as_array()?.iter().find(|span| span["name"] == "rpc").cloned()
    };
    let in_calls: Vec<serde_json::Value> = lines.iter().filter_map(rpc_span).collect();
    assert!(!in_calls.is_empty());
    for span in &in_calls {
        assert!(
            span["trace_id"].as_str().is_some_and(|id| id.len() == 32),
            "a request's log line without its trace: {span}"
        );
    }
    let approved =
        lines.iter().find(|line| line["message"] == "partner change approved").expect("the approval is logged");
    let approved_span = rpc_span(approved).unwrap();
    assert_eq!(approved_span["trace_id"], trace_id);
    assert_eq!(approved_span["resource_id"], id.as_str());
    // The saga's lines name the request too.
    let moved = lines.iter().find(|line| line["message"] == "WABA moved").expect("the transfer is logged");
    assert!(moved["spans"].as_array().unwrap().iter().any(|span| span["partner_change_id"] == id.as_str()), "{moved}");
    // No member ever logs a bearer token (every JWT starts with `eyJ`) or the signing key.
    let key = std::fs::read_to_string(cluster.dir.join("signing.key")).unwrap();
    for member in &cluster.members {
        let log = std::fs::read_to_string(&member.log).unwrap();
        assert!(!log.contains("eyJ"), "{} logged a token", member.name);
        assert!(!log.contains(key.trim()), "{} logged the signing key", member.name);
    }

    // The README's walkthrough against this cluster: its one trace reaches the
    // collector from all three services, as a viewer such as Jaeger would show it.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/walkthrough.sh");
    let walkthrough = std::process::Command::new("bash")
        .arg(script)
        .env("CLUSTER", cluster.dir.join("cluster.json"))
        .env("GRPCURL", partnerhub_tests::binary::grpcurl())
        .env("PARTNERHUB", partnerhub_tests::binary::partnerhub_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&walkthrough.stdout);
    assert!(walkthrough.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&walkthrough.stderr));
    assert!(stdout.contains("PARTNER_CHANGE_EVENT_TYPE_COMPLETED"), "{stdout}");
    let walkthrough_trace = stdout.rsplit("is trace ").next().unwrap().trim().to_owned();
    eventually("the walkthrough's trace from every service", Duration::from_secs(30), || async {
        let services: std::collections::HashSet<String> = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == walkthrough_trace)
            .map(|span| span.service)
            .collect();
        (services.len() == 3).then_some(())
    })
    .await;

    assert!(cluster.stop().success());
}
