//! TLS without a mesh: the server speaks TLS with the configured certificate,
//! its services call each other over it (trusting that certificate), and a
//! plain-text client gets nowhere.

use partnerhub_proto::account::v1::{GetWabaRequest, account_service_client::AccountServiceClient};
use partnerhub_tests::{
    Backend, TestApp,
    raw::{PREVIEW, call, preview_of_a_missing_waba},
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

#[tokio::test]
async fn the_server_speaks_tls_and_its_services_call_each_other_over_it() {
    let dir = std::env::temp_dir().join(format!("partnerhub-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.tls.cert_file = Some(cert_file.clone());
        settings.server.tls.key_file = Some(key_file.clone());
    })
    .await;

    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(certified.cert.pem())).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", app.addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A preview of a missing WABA: partner-change asks the account service, over TLS too.
    let (preview, request) = (PREVIEW, preview_of_a_missing_waba());
    let status = call(&channel, preview, &app.token("support:alice"), &[], request).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Plain text gets no answer from the service.
    let mut plain = AccountServiceClient::new(app.channel_with_token(&app.token("support:alice")));
    let refused = plain.get_waba(GetWabaRequest { waba_id: "waba-1".to_owned() }).await.unwrap_err();
    assert_ne!(refused.code(), Code::NotFound, "a plain-text call must not reach the service: {refused:?}");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `partnerhub cluster --tls`: every member serves the generated certificate
/// and calls its peers (other processes) over TLS.
#[tokio::test]
async fn the_local_cluster_runs_with_a_generated_certificate() {
    let cluster = partnerhub_tests::cluster::Cluster::start_with_args(1, &["--tls"], &[]).await;
    let member = cluster.member("partner-change-1");
    assert!(member.url.starts_with("https://"), "{}", member.url);
    let ca = std::fs::read(cluster.dir.join("cert.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cluster.dir.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by others: {mode:o}");
    }
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    let channel = Channel::from_shared(member.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let (preview, request) = (PREVIEW, preview_of_a_missing_waba());
    // The account service runs in another process: NOT_FOUND came back over TLS.
    let status = call(&channel, preview, &cluster.token("support:alice"), &[], request).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
