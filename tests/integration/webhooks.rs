//! Signed webhooks, against a local receiver that verifies every request with
//! the Standard Webhooks library (crates.io `standardwebhooks`), not with ours:
//! a whole partner change reaches the destination's, the source's and the
//! client's endpoints; a failing receiver gets the event again with the same
//! `webhook-id`; a receiver that was down gets everything once it is back;
//! secrets rotate with an overlap; private addresses are refused; another
//! tenant's endpoint answers as a missing one.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use partnerhub_proto::{
    partnerchange::v1::PartnerChangeState as St,
    webhooks::v1::{self as wh, WebhookDeliveryState},
};
use partnerhub_tests::binary::ServerProcess;
use partnerhub_tests::{
    Backend, ServiceSections, TestApp, eventually,
    http::{HttpServer, Received},
    on_both_databases, reason, violated_fields,
};
use partnerhub_webhooks::settings::RetrySchedule;
use tonic::Code;

use crate::fixtures::{scenario, unique_number, wait_for_state};

on_both_databases!(
    a_delete_racing_an_update_or_a_rotation_answers_not_found_never_internal,
    a_hanging_endpoint_does_not_delay_the_others,
    an_endpoint_failing_everything_for_long_is_disabled,
    two_replicas_deliver_each_event_once,
    a_partner_change_reaches_every_endpoint_that_sees_it_signed,
    a_failing_receiver_gets_the_event_again_with_the_same_webhook_id,
    a_receiver_that_was_down_gets_everything_once_it_is_back,
    another_tenants_endpoint_answers_as_a_missing_one,
    a_follower_whose_cursor_was_pruned_carries_on_from_the_oldest_kept_event,
    events_no_endpoint_sees_still_move_the_followers_cursor,
);

/// What a receiver got: each request, and whether the library verified it.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(Received, bool)>>>);

impl Inbox {
    fn all(&self) -> Vec<(Received, bool)> {
        self.0.lock().unwrap().clone()
    }

    /// The JSON bodies that arrived at `path`.
    fn bodies_at(&self, path: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|(received, _)| received.path == path)
            .map(|(received, _)| serde_json::from_slice(&received.body).unwrap())
            .collect()
    }
}

/// The secret of each path's endpoint, as the receiver knows it.
type Secrets = Arc<Mutex<std::collections::HashMap<String, String>>>;

/// Whether the Standard Webhooks library verifies `received` with its path's secret.
fn verified(secrets: &Secrets, received: &Received) -> bool {
    let secret = secrets.lock().unwrap().get(&received.path).cloned();
    secret.is_some_and(|secret| {
        standardwebhooks::Webhook::new(&secret).unwrap().verify(&received.body, &received.headers).is_ok()
    })
}

/// A receiver verifying with the Standard Webhooks library; `answer` says
/// what it answers to the n-th request (counting from 0).
async fn receiver(
    secrets: Secrets,
    answer: impl Fn(usize) -> http::StatusCode + Send + Sync + 'static,
) -> (HttpServer, Inbox) {
    receiver_on("127.0.0.1:0", secrets, answer).await
}

async fn receiver_on(
    addr: &str,
    secrets: Secrets,
    answer: impl Fn(usize) -> http::StatusCode + Send + Sync + 'static,
) -> (HttpServer, Inbox) {
    let inbox = Inbox::default();
    let answer = Arc::new(answer);
    let server = HttpServer::start_on(addr, None, {
        let inbox = inbox.clone();
        move |received: Received| {
            let verified = verified(&secrets, &received);
            let n = {
                let mut inbox = inbox.0.lock().unwrap();
                inbox.push((received, verified));
                inbox.len() - 1
            };
            let status = answer(n);
            async move { (status, String::new()) }
        }
    })
    .await;
    (server, inbox)
}

/// An app that may deliver to this machine over plain HTTP, retrying fast.
async fn app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |settings| {
        let webhooks = settings.webhooks();
        webhooks.allow_http = true;
        webhooks.allow_private_networks = true;
        webhooks.poll_interval = Duration::from_millis(50);
        webhooks.retry_schedule = RetrySchedule(vec![Duration::from_millis(100); 30]);
    })
    .await
}

async fn create(
    app: &TestApp,
    subject: &str,
    owner: Option<wh::create_webhook_endpoint_request::Owner>,
    url: String,
) -> (wh::WebhookEndpoint, String) {
    let created = app
        .webhooks(subject)
        .create_webhook_endpoint(wh::CreateWebhookEndpointRequest { owner, url, description: "test".into() })
        .await
        .unwrap()
        .into_inner();
    (created.endpoint.unwrap(), created.secret)
}

async fn deliveries(app: &TestApp, endpoint_id: &str) -> Vec<wh::WebhookDelivery> {
    app.webhooks("support:alice")
        .list_webhook_deliveries(wh::ListWebhookDeliveriesRequest {
            webhook_endpoint_id: endpoint_id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

fn types(bodies: &[serde_json::Value]) -> Vec<String> {
    let mut types: Vec<String> = bodies.iter().map(|body| body["type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    types
}

async fn a_partner_change_reaches_every_endpoint_that_sees_it_signed(backend: Backend) {
    use wh::create_webhook_endpoint_request::Owner;
    let app = app(backend).await;
    let s = scenario(&app, false).await;
    let secrets = Secrets::default();
    let (server, inbox) = receiver(secrets.clone(), |_| http::StatusCode::NO_CONTENT).await;
    // The destination registers its own; support registers the source's; the client its own.
    let (destination, secret) =
        create(&app, &s.destination_subject(), None, format!("{}/destination", server.base_url)).await;
    secrets.lock().unwrap().insert("/destination".into(), secret);
    let (_, secret) = create(
        &app,
        "support:alice",
        Some(Owner::PartnerId(s.source.partner_id.clone())),
        format!("{}/source", server.base_url),
    )
    .await;
    secrets.lock().unwrap().insert("/source".into(), secret);
    let (_, secret) = create(&app, &s.client_subject(), None, format!("{}/client", server.base_url)).await;
    secrets.lock().unwrap().insert("/client".into(), secret);
    // Someone else's endpoint hears nothing of it.
    let (_, secret) = create(&app, "partner:bystander", None, format!("{}/bystander", server.base_url)).await;
    secrets.lock().unwrap().insert("/bystander".into(), secret);

    let change = s.submit(&app, "webhook-flow").await;
    s.approve(&app, &change.partner_change_id).await;
    wait_for_state(&app, &change.partner_change_id, St::Completed).await;

    let expected = ["completed", "approved", "migration_started", "submitted"].map(|t| format!("partner_change.{t}"));
    let mut expected = expected.to_vec();
    expected.sort();
    for path in ["/destination", "/source", "/client"] {
        eventually("every event at every endpoint", Duration::from_secs(20), || {
            let got = types(&inbox.bodies_at(path));
            async move { (got.len() >= 4).then_some(()) }
        })
        .await;
        assert_eq!(types(&inbox.bodies_at(path)), expected, "{path}");
    }
    assert!(inbox.bodies_at("/bystander").is_empty());
    let all = inbox.all();
    assert!(all.iter().all(|(_, verified)| *verified), "every request verifies with the library");
    let ids: std::collections::HashSet<_> =
        all.iter().map(|(received, _)| received.headers["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), all.len(), "one webhook-id per event and endpoint");
    let body = &inbox.bodies_at("/destination")[0];
    assert_eq!(body["data"]["partner_change"]["partner_change_id"], change.partner_change_id);
    assert!(body["data"]["cursor"].as_str().is_some_and(|cursor| !cursor.is_empty()));
    assert!(body["timestamp"].as_str().is_some());

    // The receiver answers before the attempt is recorded.
    let listed = eventually("the attempts recorded", Duration::from_secs(10), || {
        let (app, id) = (&app, destination.webhook_endpoint_id.clone());
        async move {
            let listed = deliveries(app, &id).await;
            listed.iter().all(|d| d.state() == WebhookDeliveryState::Delivered).then_some(listed)
        }
    })
    .await;
    assert_eq!(listed.len(), 4);
    for delivery in &listed {
        assert_eq!(delivery.attempts.len(), 1);
        assert_eq!(delivery.attempts[0].http_status, 204);
        assert_eq!(delivery.partner_change_id, change.partner_change_id);
    }
}

async fn a_failing_receiver_gets_the_event_again_with_the_same_webhook_id(backend: Backend) {
    let app = app(backend).await;
    let s = scenario(&app, false).await;
    let secrets = Secrets::default();
    // 500, 500, then 200 for everything.
    let (server, inbox) =
        receiver(
            secrets.clone(),
            |n| {
                if n < 2 { http::StatusCode::INTERNAL_SERVER_ERROR } else { http::StatusCode::OK }
            },
        )
        .await;
    let (endpoint, secret) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    secrets.lock().unwrap().insert("/hook".into(), secret);
    s.submit(&app, "webhook-retry").await;

    let delivered = eventually("the event delivered", Duration::from_secs(20), || {
        let app = &app;
        let id = endpoint.webhook_endpoint_id.clone();
        async move {
            let listed = deliveries(app, &id).await;
            listed.into_iter().find(|d| d.state() == WebhookDeliveryState::Delivered)
        }
    })
    .await;
    let statuses: Vec<i32> = delivered.attempts.iter().map(|attempt| attempt.http_status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    let requests = inbox.all();
    assert_eq!(requests.len(), 3);
    for (received, verified) in &requests {
        assert!(verified);
        assert_eq!(received.headers["webhook-id"], delivered.webhook_message_id.as_str(), "stable across retries");
    }

    // Sent again on demand, with the same webhook-id.
    let again = app
        .webhooks(&s.destination_subject())
        .redeliver_webhook_event(wh::RedeliverWebhookEventRequest {
            webhook_delivery_id: delivered.webhook_delivery_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(again.state(), WebhookDeliveryState::Pending);
    eventually("the redelivery", Duration::from_secs(10), || {
        let count = inbox.all().len();
        async move { (count == 4).then_some(()) }
    })
    .await;
    assert_eq!(inbox.all()[3].0.headers["webhook-id"], delivered.webhook_message_id.as_str());
}

async fn a_receiver_that_was_down_gets_everything_once_it_is_back(backend: Backend) {
    let app = app(backend).await;
    let s = scenario(&app, true).await;
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (endpoint, secret) =
        create(&app, &s.destination_subject(), None, format!("http://127.0.0.1:{port}/hook")).await;
    let change = s.submit(&app, "webhook-down").await;
    wait_for_state(&app, &change.partner_change_id, St::Completed).await;
    // Attempts fail while the receiver is down…
    eventually("failed attempts", Duration::from_secs(10), || {
        let app = &app;
        let id = endpoint.webhook_endpoint_id.clone();
        async move {
            let listed = deliveries(app, &id).await;
            listed.iter().all(|d| d.attempts.len() >= 2 && d.attempts[0].http_status == 0).then_some(())
        }
    })
    .await;
    let listed = deliveries(&app, &endpoint.webhook_endpoint_id).await;
    assert!(listed.iter().all(|d| d.state() == WebhookDeliveryState::Pending));
    assert!(!listed[0].attempts[0].error.is_empty(), "the connection error is recorded");

    // …and once it is back, everything arrives.
    let secrets = Secrets::default();
    secrets.lock().unwrap().insert("/hook".into(), secret);
    let (_server, inbox) = receiver_on(&format!("127.0.0.1:{port}"), secrets, |_| http::StatusCode::OK).await;
    eventually("everything delivered", Duration::from_secs(20), || {
        let count = inbox.bodies_at("/hook").len();
        async move { (count >= 4).then_some(()) }
    })
    .await;
    let mut expected =
        ["completed", "approved", "migration_started", "submitted"].map(|t| format!("partner_change.{t}")).to_vec();
    expected.sort();
    assert_eq!(types(&inbox.bodies_at("/hook")), expected);
    assert!(inbox.all().iter().all(|(_, verified)| *verified));
}

/// The webhooks service was away longer than the event log keeps events: its
/// stored cursor is older than the oldest event kept. The stream refuses the
/// cursor (OUT_OF_RANGE); the follower carries on from the oldest kept event
/// instead of retrying the dead cursor forever, and delivers nothing twice.
async fn a_follower_whose_cursor_was_pruned_carries_on_from_the_oldest_kept_event(backend: Backend) {
    use partnerhub_webhooks::store::entities::follower;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};

    let app = TestApp::spawn_with(backend, |settings| {
        let webhooks = settings.webhooks();
        webhooks.allow_http = true;
        webhooks.allow_private_networks = true;
        webhooks.poll_interval = Duration::from_millis(50);
        // Renewed every 300 ms: a lease taken by another holder is noticed quickly.
        webhooks.follower_lease = Duration::from_millis(900);
    })
    .await;
    let s = scenario(&app, true).await;
    let secrets = Secrets::default();
    let (server, inbox) = receiver(secrets.clone(), |_| http::StatusCode::NO_CONTENT).await;
    let (_, secret) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    secrets.lock().unwrap().insert("/hook".into(), secret);
    let delivered = async |count: usize| {
        eventually(&format!("{count} webhooks"), Duration::from_secs(20), || {
            let got = inbox.bodies_at("/hook").len();
            async move { (got >= count).then_some(()) }
        })
        .await
    };

    let first = s.submit(&app, "before-the-absence").await;
    wait_for_state(&app, &first.partner_change_id, St::Completed).await;
    delivered(4).await;
    let bodies = inbox.bodies_at("/hook");
    let oldest_cursor = bodies
        .iter()
        .find(|body| body["type"] == "partner_change.submitted")
        .and_then(|body| body["data"]["cursor"].as_str())
        .unwrap()
        .to_owned();

    // Months later: all but the newest event pruned, and the service back with
    // the cursor of the first event it ever read (as if it had been away since).
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    let pruned = partnerhub_runtime::retention::prune(
        &db,
        partnerhub_partner_change::store::EVENT_LOG,
        chrono::Utc::now() + chrono::Duration::days(1),
        1000,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 3, "all but the newest of the four events");
    follower::Entity::update_many()
        .col_expr(follower::Column::Cursor, Expr::value(oldest_cursor))
        .col_expr(follower::Column::Holder, Expr::value(Some("replica-that-was-away")))
        .col_expr(
            follower::Column::LeaseUntil,
            Expr::value(Some(chrono::Utc::now() + chrono::Duration::milliseconds(500))),
        )
        .filter(follower::Column::Id.eq(1))
        .exec(&db)
        .await
        .unwrap();

    // Events after the absence (another WABA of the client, to the same
    // destination) still reach the endpoint, and nothing twice.
    let mut s = s;
    s.waba = crate::fixtures::waba(&app, &s.client.client_id, &s.source.partner_id, &[&unique_number()]).await;
    let second = s.submit(&app, "after-the-absence").await;
    wait_for_state(&app, &second.partner_change_id, St::Completed).await;
    delivered(8).await;
    let bodies = inbox.bodies_at("/hook");
    let changes: Vec<&str> =
        bodies.iter().map(|body| body["data"]["partner_change"]["partner_change_id"].as_str().unwrap()).collect();
    assert_eq!(changes.iter().filter(|id| **id == second.partner_change_id).count(), 4, "{changes:?}");
    let ids: std::collections::HashSet<_> =
        inbox.all().iter().map(|(received, _)| received.headers["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 8, "each event delivered once, the one read again included");
}

async fn events_no_endpoint_sees_still_move_the_followers_cursor(backend: Backend) {
    use partnerhub_webhooks::store::entities::follower;
    use sea_orm::EntityTrait;

    let app = TestApp::spawn_with(backend, |settings| {
        settings.webhooks().follower_lease = Duration::from_millis(1500);
    })
    .await;
    let s = scenario(&app, true).await;
    let db = sea_orm::Database::connect(app.database_url()).await.unwrap();
    let stored_cursor = async || follower::Entity::find_by_id(1).one(&db).await.unwrap().map(|row| row.cursor);
    let before = stored_cursor().await;

    // No endpoint anywhere: the follower has nothing to deliver, but moves on,
    // storing its cursor with its next lease renewal (every third of the lease).
    let change = s.submit(&app, "unwatched").await;
    wait_for_state(&app, &change.partner_change_id, St::Completed).await;
    let moved = eventually("the follower's cursor to move", Duration::from_secs(10), || async {
        stored_cursor().await.filter(|cursor| !cursor.is_empty() && Some(cursor) != before.as_ref())
    })
    .await;
    assert_ne!(Some(moved), before);
}

async fn another_tenants_endpoint_answers_as_a_missing_one(backend: Backend) {
    let app = app(backend).await;
    let (endpoint, _) = create(&app, "partner:owner", None, "http://127.0.0.1:9/hook".into()).await;
    let id = endpoint.webhook_endpoint_id.clone();
    let missing = "whe-0192f1d24a1b7c2d8e3f4a5b6c7d8e9f".to_owned();
    for subject in ["partner:stranger", "client:stranger"] {
        let client = app.webhooks(subject);
        for target in [&id, &missing] {
            let get = client
                .clone()
                .get_webhook_endpoint(wh::GetWebhookEndpointRequest { webhook_endpoint_id: target.clone() })
                .await
                .unwrap_err();
            assert_eq!((get.code(), reason(&get)), (Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND".to_owned()));
            assert_eq!(get.message(), format!("webhook endpoint {target} not found"), "worded alike");
        }
        let calls = [
            client
                .clone()
                .delete_webhook_endpoint(wh::DeleteWebhookEndpointRequest { webhook_endpoint_id: id.clone() })
                .await
                .map(drop),
            client
                .clone()
                .rotate_webhook_secret(wh::RotateWebhookSecretRequest {
                    webhook_endpoint_id: id.clone(),
                    overlap: None,
                })
                .await
                .map(drop),
            client
                .clone()
                .list_webhook_deliveries(wh::ListWebhookDeliveriesRequest {
                    webhook_endpoint_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            client
                .clone()
                .update_webhook_endpoint(wh::UpdateWebhookEndpointRequest {
                    endpoint: Some(wh::WebhookEndpoint {
                        webhook_endpoint_id: id.clone(),
                        disabled: true,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
                })
                .await
                .map(drop),
        ];
        for call in calls {
            assert_eq!(call.unwrap_err().code(), Code::NotFound, "{subject}");
        }
        let listed = client
            .clone()
            .list_webhook_endpoints(wh::ListWebhookEndpointsRequest {
                owner: Some(wh::list_webhook_endpoints_request::Owner::PartnerId("owner".into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(listed.code(), Code::NotFound);
    }
    // Untouched, and the owner and support see it.
    let own = app
        .webhooks("partner:owner")
        .get_webhook_endpoint(wh::GetWebhookEndpointRequest { webhook_endpoint_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert!(!own.disabled);
    let listed = app
        .webhooks("support:alice")
        .list_webhook_endpoints(wh::ListWebhookEndpointsRequest {
            owner: Some(wh::list_webhook_endpoints_request::Owner::PartnerId("owner".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints.len(), 1);
    // At most twenty endpoints per owner.
    for n in 1..20 {
        create(&app, "partner:owner", None, format!("http://127.0.0.1:9/hook/{n}")).await;
    }
    let twenty_first = app
        .webhooks("partner:owner")
        .create_webhook_endpoint(wh::CreateWebhookEndpointRequest {
            owner: None,
            url: "http://127.0.0.1:9/hook/21".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (twenty_first.code(), reason(&twenty_first)),
        (Code::ResourceExhausted, "TOO_MANY_WEBHOOK_ENDPOINTS".into())
    );
    // A service has no business here at all.
    let service = app
        .webhooks("service:messaging")
        .get_webhook_endpoint(wh::GetWebhookEndpointRequest { webhook_endpoint_id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(service.code(), Code::PermissionDenied);
}

/// Registration refuses what delivery would refuse: plain HTTP, cloud
/// metadata, loopback by address and by name.
#[tokio::test]
async fn private_addresses_and_plain_http_are_refused_unless_allowed() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "https://169.254.169.254/latest/meta-data",
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://10.0.0.7/hook",
        "https://[::1]/hook",
        "not a url",
    ]
    .into_iter()
    .map(str::to_owned)
    // Within the length limit as sent, beyond it once percent-encoded.
    .chain([format!("https://93.184.215.14/{}", "é".repeat(1500))])
    {
        let refused = app
            .webhooks("partner:p1")
            .create_webhook_endpoint(wh::CreateWebhookEndpointRequest {
                owner: None,
                url: url.clone(),
                description: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}: {refused:?}");
        assert_eq!(violated_fields(&refused), ["url"], "{url}");
    }
    let listed = app
        .webhooks("partner:p1")
        .list_webhook_endpoints(wh::ListWebhookEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty(), "nothing was created");
}

/// During a rotation's overlap each request carries both signatures; after
/// a rotation without overlap only the new secret verifies.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_during_the_overlap() {
    let app = app(Backend::Sqlite).await;
    let s = scenario(&app, false).await;
    let secrets = Secrets::default();
    let (server, inbox) = receiver(secrets.clone(), |_| http::StatusCode::OK).await;
    let (endpoint, old) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    let rotated = app
        .webhooks(&s.destination_subject())
        .rotate_webhook_secret(wh::RotateWebhookSecretRequest {
            webhook_endpoint_id: endpoint.webhook_endpoint_id.clone(),
            overlap: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret;
    assert_ne!(new, old);
    assert!(rotated.endpoint.unwrap().previous_secret_expire_time.is_some());
    s.submit(&app, "webhook-rotation").await;
    eventually("the event", Duration::from_secs(10), || {
        let count = inbox.all().len();
        async move { (count >= 1).then_some(()) }
    })
    .await;
    let (received, _) = inbox.all()[0].clone();
    let verifies = |secret: &str| {
        standardwebhooks::Webhook::new(secret).unwrap().verify(&received.body, &received.headers).is_ok()
    };
    assert!(verifies(&old) && verifies(&new), "both secrets during the overlap");
    assert_eq!(received.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);

    // Without overlap the old one is gone at once.
    let newest = app
        .webhooks(&s.destination_subject())
        .rotate_webhook_secret(wh::RotateWebhookSecretRequest {
            webhook_endpoint_id: endpoint.webhook_endpoint_id.clone(),
            overlap: None,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    s.another_waba(&app, 1).await.submit(&app, "webhook-rotation-2").await;
    eventually("the second event", Duration::from_secs(10), || {
        let count = inbox.all().len();
        async move { (count >= 2).then_some(()) }
    })
    .await;
    let (received, _) = inbox.all()[1].clone();
    let verifies = |secret: &str| {
        standardwebhooks::Webhook::new(secret).unwrap().verify(&received.body, &received.headers).is_ok()
    };
    assert!(verifies(&newest));
    assert!(!verifies(&new) && !verifies(&old));
}

async fn two_replicas_deliver_each_event_once(backend: Backend) {
    let app = app(backend).await;
    let replica = app.spawn_replica().await;
    let s = scenario(&app, true).await;
    let secrets = Secrets::default();
    let (server, inbox) = receiver(secrets.clone(), |_| http::StatusCode::OK).await;
    let (endpoint, secret) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    secrets.lock().unwrap().insert("/hook".into(), secret);
    // Three auto-approved changes, submitted through either replica: twelve events.
    let mut changes = Vec::new();
    for n in 0..3 {
        let through = if n % 2 == 0 { &app } else { &replica };
        let one = s.another_waba(through, 1).await;
        changes.push(one.submit(through, &format!("webhook-replicas-{n}")).await.partner_change_id);
    }
    for id in &changes {
        wait_for_state(&app, id, St::Completed).await;
    }
    eventually("twelve deliveries", Duration::from_secs(20), || {
        let count = inbox.all().len();
        async move { (count >= 12).then_some(()) }
    })
    .await;
    // Let a duplicate, if either replica were to send one, arrive.
    eventually("every delivery recorded", Duration::from_secs(5), || {
        let (app, id) = (&app, endpoint.webhook_endpoint_id.clone());
        async move {
            let listed = deliveries(app, &id).await;
            (listed.len() == 12 && listed.iter().all(|d| d.state() == WebhookDeliveryState::Delivered)).then_some(())
        }
    })
    .await;
    let all = inbox.all();
    assert_eq!(all.len(), 12, "each event once, though two replicas deliver");
    let ids: std::collections::HashSet<_> =
        all.iter().map(|(received, _)| received.headers["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 12);
    assert!(all.iter().all(|(_, verified)| *verified));
    drop(replica);
}

/// A PostgreSQL database, a signing key, and the environment of server
/// processes on them that deliver to this machine and hand work over quickly.
async fn process_setup() -> (partnerhub_tests::TestDatabase, String, Vec<(String, String)>) {
    use base64::Engine as _;
    let database = partnerhub_tests::TestDatabase::create(Backend::Postgres).await;
    let key = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let env = [
        ("PARTNERHUB__DATABASE__URL", database.url().unwrap()),
        ("PARTNERHUB__AUTH__SIGNING_KEY", key.clone()),
        ("PARTNERHUB__WEBHOOKS__ALLOW_HTTP", "true".to_owned()),
        ("PARTNERHUB__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
        ("PARTNERHUB__WEBHOOKS__FOLLOWER_LEASE", "2s".to_owned()),
        ("PARTNERHUB__WEBHOOKS__POLL_INTERVAL", "100ms".to_owned()),
    ];
    (database, key, env.into_iter().map(|(name, value)| (name.to_owned(), value)).collect())
}

/// Two server processes on one PostgreSQL database; the one that follows the
/// event stream for webhooks is killed with SIGKILL; the other takes over once
/// its lease lapses, and no event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_following_replica_killed_loses_no_event() {
    let (database, key, mut env) = process_setup().await;
    env.extend([
        ("PARTNERHUB__WEBHOOKS__RETRY_SCHEDULE".to_owned(), "200ms,200ms,200ms,200ms,200ms".to_owned()),
        ("PARTNERHUB__PARTNER_CHANGE__WORKER__POLL_INTERVAL".to_owned(), "100ms".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    // The first to start takes the follower's lease.
    // Each in its own directory: its own log.
    let first = ServerProcess::start_with(&database.data_dir().join("first"), &[], &env);
    let first_clients = first.clients(Some(&key));
    let s = scenario(&first_clients, true).await;
    let secrets = Secrets::default();
    let (server, inbox) = receiver(secrets.clone(), |_| http::StatusCode::OK).await;
    let created = first_clients
        .webhooks(&s.destination_subject())
        .create_webhook_endpoint(wh::CreateWebhookEndpointRequest {
            owner: None,
            url: format!("{}/hook", server.base_url),
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.lock().unwrap().insert("/hook".into(), created.secret);
    let second = ServerProcess::start_with(&database.data_dir().join("second"), &[], &env);
    let second_clients = second.clients(Some(&key));

    let before = s.submit(&first_clients, "before-the-kill").await;
    eventually("the first change's four events", Duration::from_secs(20), || {
        let count = inbox.bodies_at("/hook").len();
        async move { (count >= 4).then_some(()) }
    })
    .await;
    assert!(first.log().contains("following the event stream for webhooks"), "the first process follows");
    assert!(!second.log().contains("following the event stream for webhooks"), "the second waits");
    first.kill();

    let after = s.another_waba(&second_clients, 1).await.submit(&second_clients, "after-the-kill").await;
    wait_for_state(&second_clients, &after.partner_change_id, St::Completed).await;
    eventually("the second change's events, from the surviving replica", Duration::from_secs(30), || {
        let count = inbox.bodies_at("/hook").len();
        async move { (count >= 8).then_some(()) }
    })
    .await;
    let mut seen: Vec<(String, String)> = inbox
        .bodies_at("/hook")
        .iter()
        .map(|body| {
            let id = body["data"]["partner_change"]["partner_change_id"].as_str().unwrap().to_owned();
            (id, body["type"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every event of both changes: {seen:?}");
    assert!(seen.iter().any(|(id, _)| *id == before.partner_change_id));
    assert!(inbox.all().iter().all(|(_, verified)| *verified));
    assert!(second.log().contains("following the event stream for webhooks"), "the second took over");
    drop(second);
}

async fn a_hanging_endpoint_does_not_delay_the_others(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        let webhooks = settings.webhooks();
        webhooks.allow_http = true;
        webhooks.allow_private_networks = true;
        webhooks.poll_interval = Duration::from_millis(50);
        webhooks.request_timeout = Duration::from_secs(60);
        // Few slots, so that without the per-endpoint cap the hanging endpoint would hold them all.
        webhooks.max_in_flight = 6;
        webhooks.max_in_flight_per_endpoint = 2;
    })
    .await;
    let s = scenario(&app, true).await;
    let secrets = Secrets::default();
    let inbox = Inbox::default();
    let server = HttpServer::start(None, {
        let (inbox, secrets) = (inbox.clone(), secrets.clone());
        move |received: Received| {
            let hang = received.path == "/hanging";
            let verified = verified(&secrets, &received);
            inbox.0.lock().unwrap().push((received, verified));
            async move {
                if hang {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                }
                (http::StatusCode::OK, String::new())
            }
        }
    })
    .await;
    create(&app, &s.destination_subject(), None, format!("{}/hanging", server.base_url)).await;
    let (_, secret) = create(&app, &s.destination_subject(), None, format!("{}/healthy", server.base_url)).await;
    secrets.lock().unwrap().insert("/healthy".into(), secret);
    for n in 0..3 {
        let one = s.another_waba(&app, 1).await;
        let change = one.submit(&app, &format!("webhook-hanging-{n}")).await;
        wait_for_state(&app, &change.partner_change_id, St::Completed).await;
    }
    // Twelve events reach the healthy endpoint while the hanging one holds two slots.
    eventually("every event at the healthy endpoint", Duration::from_secs(15), || {
        let count = inbox.bodies_at("/healthy").len();
        async move { (count >= 12).then_some(()) }
    })
    .await;
    let hanging = inbox.all().iter().filter(|(received, _)| received.path == "/hanging").count();
    assert!(hanging <= 2, "at most two POSTs in flight to one endpoint, got {hanging}");
    assert!(inbox.all().iter().filter(|(received, _)| received.path == "/healthy").all(|(_, verified)| *verified));
}

async fn an_endpoint_failing_everything_for_long_is_disabled(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        let webhooks = settings.webhooks();
        webhooks.allow_http = true;
        webhooks.allow_private_networks = true;
        webhooks.poll_interval = Duration::from_millis(50);
        webhooks.retry_schedule = RetrySchedule(vec![Duration::from_millis(100); 100]);
        webhooks.disable_after = Duration::from_millis(500);
    })
    .await;
    let s = scenario(&app, false).await;
    let (server, inbox) = receiver(Secrets::default(), |_| http::StatusCode::SERVICE_UNAVAILABLE).await;
    let (endpoint, _) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    s.submit(&app, "webhook-disabled").await;
    let disabled = eventually("the endpoint disabled", Duration::from_secs(15), || {
        let (app, id) = (&app, endpoint.webhook_endpoint_id.clone());
        async move {
            let endpoint = app
                .webhooks("support:alice")
                .get_webhook_endpoint(wh::GetWebhookEndpointRequest { webhook_endpoint_id: id })
                .await
                .unwrap()
                .into_inner()
                .endpoint
                .unwrap();
            endpoint.disabled.then_some(endpoint)
        }
    })
    .await;
    assert!(disabled.disabled_reason.contains("disable_after"), "{}", disabled.disabled_reason);
    let listed = deliveries(&app, &endpoint.webhook_endpoint_id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), WebhookDeliveryState::Failed);
    assert!(listed[0].attempts.len() >= 2 && listed[0].attempts.iter().all(|attempt| attempt.http_status == 503));
    // Nothing more is sent to it, not even on demand.
    let redeliver = app
        .webhooks(&s.destination_subject())
        .redeliver_webhook_event(wh::RedeliverWebhookEventRequest {
            webhook_delivery_id: listed[0].webhook_delivery_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!((redeliver.code(), reason(&redeliver)), (Code::FailedPrecondition, "WEBHOOK_ENDPOINT_DISABLED".into()));
    let sent = inbox.all().len();
    assert_eq!(sent, listed[0].attempts.len());
}

/// An endpoint registered while private addresses were allowed is refused at
/// delivery once they are not: the name is resolved again and checked by the
/// resolver the HTTP client connects with.
#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_is_refused_at_delivery() {
    let mut app = app(Backend::Sqlite).await;
    let s = scenario(&app, false).await;
    let (server, inbox) = receiver(Secrets::default(), |_| http::StatusCode::OK).await;
    let url = format!("http://localhost:{}/hook", server.addr.port());
    let (endpoint, _) = create(&app, &s.destination_subject(), None, url).await;
    app.settings.webhooks().allow_private_networks = false;
    app.restart().await;
    s.submit(&app, "webhook-rebound").await;
    let attempt = eventually("a refused attempt", Duration::from_secs(10), || {
        let (app, id) = (&app, endpoint.webhook_endpoint_id.clone());
        async move { deliveries(app, &id).await.first().and_then(|delivery| delivery.attempts.first().cloned()) }
    })
    .await;
    assert_eq!(attempt.http_status, 0);
    assert!(attempt.error.contains("private, loopback or link-local"), "{}", attempt.error);
    assert!(inbox.all().is_empty(), "nothing reached the address");
}

/// A replica killed while a POST of its is in flight: the claim lapses and
/// another replica sends the delivery, with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_at_a_sigkill_is_sent_by_another_replica() {
    let (database, key, mut env) = process_setup().await;
    // A claim lasts twice this: long enough to kill the sender mid-POST, short enough to wait for.
    env.push(("PARTNERHUB__WEBHOOKS__REQUEST_TIMEOUT".to_owned(), "3s".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let first = ServerProcess::start_with(&database.data_dir().join("first"), &[], &env);
    let clients = first.clients(Some(&key));
    let s = scenario(&clients, false).await;
    // The first POST hangs (the sender dies meanwhile); later ones are answered.
    let inbox = Inbox::default();
    let server = HttpServer::start(None, {
        let inbox = inbox.clone();
        move |received: Received| {
            let first_request = {
                let mut inbox = inbox.0.lock().unwrap();
                inbox.push((received, true));
                inbox.len() == 1
            };
            async move {
                if first_request {
                    tokio::time::sleep(Duration::from_secs(300)).await;
                }
                (http::StatusCode::OK, String::new())
            }
        }
    })
    .await;
    clients
        .webhooks(&s.destination_subject())
        .create_webhook_endpoint(wh::CreateWebhookEndpointRequest {
            owner: None,
            url: format!("{}/hook", server.base_url),
            description: String::new(),
        })
        .await
        .unwrap();
    s.submit(&clients, "in-flight").await;
    eventually("the POST in flight", Duration::from_secs(10), || {
        let count = inbox.all().len();
        async move { (count == 1).then_some(()) }
    })
    .await;
    first.kill();

    // Its claim lapses 6 s after it was taken; then the surviving replica sends it.
    let second = ServerProcess::start_with(&database.data_dir().join("second"), &[], &env);
    eventually("the delivery sent again", Duration::from_secs(20), || {
        let count = inbox.all().len();
        async move { (count >= 2).then_some(()) }
    })
    .await;
    let all = inbox.all();
    assert_eq!(all[0].0.headers["webhook-id"], all[1].0.headers["webhook-id"], "the same delivery");
    drop(second);
}

/// A graceful stop does not wait for a POST in flight (it could take the whole
/// request timeout): the POST is given up, its claim lapses, it is sent again later.
#[tokio::test]
async fn a_graceful_stop_does_not_wait_for_a_hanging_receiver() {
    let mut app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        let webhooks = settings.webhooks();
        webhooks.allow_http = true;
        webhooks.allow_private_networks = true;
        webhooks.poll_interval = Duration::from_millis(50);
        webhooks.request_timeout = Duration::from_secs(60);
    })
    .await;
    let s = scenario(&app, false).await;
    let inbox = Inbox::default();
    let server = HttpServer::start(None, {
        let inbox = inbox.clone();
        move |received: Received| {
            inbox.0.lock().unwrap().push((received, true));
            async {
                tokio::time::sleep(Duration::from_secs(300)).await;
                (http::StatusCode::OK, String::new())
            }
        }
    })
    .await;
    create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    s.submit(&app, "hanging-at-stop").await;
    eventually("the POST in flight", Duration::from_secs(10), || {
        let count = inbox.all().len();
        async move { (count == 1).then_some(()) }
    })
    .await;
    // Within the 5 s grace the tests give, or `restart` fails.
    app.restart().await;
}

/// A redirect is an answer like any other that is not 2xx: recorded and
/// retried, never followed.
#[tokio::test]
async fn a_redirect_is_not_followed() {
    let app = app(Backend::Sqlite).await;
    let s = scenario(&app, false).await;
    let inbox = Inbox::default();
    let server = HttpServer::start(None, {
        let inbox = inbox.clone();
        move |received: Received| {
            let redirect = received.path == "/hook";
            inbox.0.lock().unwrap().push((received, true));
            async move {
                if redirect {
                    (http::StatusCode::TEMPORARY_REDIRECT, "/elsewhere".to_owned())
                } else {
                    (http::StatusCode::OK, String::new())
                }
            }
        }
    })
    .await;
    let (endpoint, _) = create(&app, &s.destination_subject(), None, format!("{}/hook", server.base_url)).await;
    s.submit(&app, "redirected").await;
    let delivery = eventually("two redirected attempts", Duration::from_secs(10), || {
        let (app, id) = (&app, endpoint.webhook_endpoint_id.clone());
        async move { deliveries(app, &id).await.into_iter().find(|delivery| delivery.attempts.len() >= 2) }
    })
    .await;
    assert!(delivery.attempts.iter().all(|attempt| attempt.http_status == 307));
    assert_eq!(delivery.state(), WebhookDeliveryState::Pending, "retried, as any non-2xx answer");
    assert!(inbox.all().iter().all(|(received, _)| received.path == "/hook"), "the redirect was not followed");
}

/// Update (url, description, disabled), pagination of the list, and delete.
#[tokio::test]
async fn an_endpoint_is_updated_listed_page_by_page_and_deleted() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.webhooks().allow_http = true;
        settings.webhooks().allow_private_networks = true;
    })
    .await;
    let owner = app.webhooks("client:c-owner");
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(create(&app, "client:c-owner", None, format!("http://127.0.0.1:9/{n}")).await.0.webhook_endpoint_id);
    }
    let update = |mask: &[&str], endpoint: wh::WebhookEndpoint| wh::UpdateWebhookEndpointRequest {
        endpoint: Some(endpoint),
        update_mask: Some(prost_types::FieldMask { paths: mask.iter().map(|path| (*path).to_owned()).collect() }),
    };
    let changed = owner
        .clone()
        .update_webhook_endpoint(update(
            &["url", "description", "disabled"],
            wh::WebhookEndpoint {
                webhook_endpoint_id: ids[0].clone(),
                url: "http://127.0.0.1:9/new".into(),
                description: "renamed".into(),
                disabled: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(
        (changed.url.as_str(), changed.description.as_str(), changed.disabled),
        ("http://127.0.0.1:9/new", "renamed", true)
    );
    assert_eq!(changed.disabled_reason, "disabled by its owner");
    // Fields outside the mask stay; a bad mask or URL is refused naming the field.
    let only_description = owner
        .clone()
        .update_webhook_endpoint(update(
            &["description"],
            wh::WebhookEndpoint {
                webhook_endpoint_id: ids[0].clone(),
                description: "again".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!((only_description.url.as_str(), only_description.disabled), ("http://127.0.0.1:9/new", true));
    for (mask, url, field) in
        [(&["secret"][..], "", "update_mask"), (&[][..], "", "update_mask"), (&["url"][..], "ftp://x/", "endpoint.url")]
    {
        let refused = owner
            .clone()
            .update_webhook_endpoint(update(
                mask,
                wh::WebhookEndpoint { webhook_endpoint_id: ids[0].clone(), url: url.into(), ..Default::default() },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), violated_fields(&refused)),
            (Code::InvalidArgument, vec![field.to_owned()]),
            "{mask:?}"
        );
    }

    // Two pages of two and one, in creation order.
    let page = |token: String| {
        let owner = owner.clone();
        async move {
            owner
                .clone()
                .list_webhook_endpoints(wh::ListWebhookEndpointsRequest {
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = page(String::new()).await;
    let second = page(first.next_page_token.clone()).await;
    let listed: Vec<String> =
        first.endpoints.iter().chain(&second.endpoints).map(|endpoint| endpoint.webhook_endpoint_id.clone()).collect();
    assert_eq!(listed, ids);
    assert!(second.next_page_token.is_empty());

    owner
        .clone()
        .delete_webhook_endpoint(wh::DeleteWebhookEndpointRequest { webhook_endpoint_id: ids[1].clone() })
        .await
        .unwrap();
    let gone = owner
        .clone()
        .get_webhook_endpoint(wh::GetWebhookEndpointRequest { webhook_endpoint_id: ids[1].clone() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(page(String::new()).await.endpoints.len(), 2);
}

async fn a_delete_racing_an_update_or_a_rotation_answers_not_found_never_internal(backend: Backend) {
    let app = app(backend).await;
    let owner = app.webhooks("partner:racer");
    for n in 0..10 {
        let (endpoint, _) = create(&app, "partner:racer", None, format!("http://127.0.0.1:9/{n}")).await;
        let id = endpoint.webhook_endpoint_id;
        let (mut a, mut b, mut c) = (owner.clone(), owner.clone(), owner.clone());
        let (deleted, updated, rotated) = tokio::join!(
            a.delete_webhook_endpoint(wh::DeleteWebhookEndpointRequest { webhook_endpoint_id: id.clone() }),
            b.update_webhook_endpoint(wh::UpdateWebhookEndpointRequest {
                endpoint: Some(wh::WebhookEndpoint {
                    webhook_endpoint_id: id.clone(),
                    description: "raced".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["description".into()] }),
            }),
            c.rotate_webhook_secret(wh::RotateWebhookSecretRequest { webhook_endpoint_id: id.clone(), overlap: None }),
        );
        deleted.unwrap();
        for outcome in [updated.map(drop), rotated.map(drop)] {
            if let Err(status) = outcome {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
            }
        }
    }
}
