//! The real `partnerhub` binary as a user runs it: `serve` on its embedded
//! default, `token` for grpcurl, reflection and health through the real
//! grpcurl, and a clean exit on SIGTERM.

use std::process::Command;

use partnerhub_tests::binary::{ServerProcess, grpcurl, pip_tools, run_cli};

fn run_grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl()).args(args).output().expect("grpcurl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The harness finds the binary where Cargo says it built it for these tests.
#[test]
fn the_harness_runs_the_binary_cargo_built_for_these_tests() {
    assert_eq!(
        partnerhub_tests::binary::partnerhub_binary(),
        std::path::Path::new(env!("CARGO_BIN_EXE_partnerhub-under-test"))
    );
}

#[test]
fn grpcurl_lists_describes_checks_health_and_calls_with_a_minted_token() {
    let data_dir = std::env::temp_dir().join(format!("partnerhub-process-{}", uuid::Uuid::new_v4().simple()));
    let server = ServerProcess::start(&data_dir);
    let addr = server.addr.to_string();
    assert!(data_dir.join("signing.key").exists(), "a key was generated into the data directory");
    assert!(data_dir.join("partnerhub.db").exists(), "the embedded database was created");

    // Reflection, without a token.
    let (ok, listed) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{listed}");
    for service in ["partnerhub.account.v1.AccountService", "grpc.health.v1.Health"] {
        assert!(listed.lines().any(|line| line == service), "{service} missing from:\n{listed}");
    }
    let (ok, described) = run_grpcurl(&["-plaintext", &addr, "describe", "partnerhub.account.v1.Waba"]);
    assert!(ok, "{described}");
    assert!(described.contains("repeated string phone_numbers"), "{described}");

    // Health, without a token.
    let (ok, health) = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && health.contains("SERVING"), "{health}");

    // An authenticated call with a token minted by the CLI.
    let token = server.run_cli(&["token", "--subject", "support:alice", "--ttl", "10m"]);
    let authorization = format!("authorization: Bearer {}", token.trim());
    let (ok, created) = run_grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"display_name": "Acme BSP", "payment_processor": "PAYMENT_PROCESSOR_STRIPE", "settings": {"terms_version": "2026-01", "accepting_changes": true}}"#,
        &addr,
        "partnerhub.account.v1.AccountService/CreatePartner",
    ]);
    assert!(ok, "{created}");
    assert!(created.contains("\"partnerId\": \"partner-"), "{created}");

    // Refusals show their google.rpc details, decoded through reflection.
    let (ok, refused) = run_grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"partner_id": "no such partner"}"#,
        &addr,
        "partnerhub.account.v1.AccountService/GetPartner",
    ]);
    assert!(!ok);
    let compact: String = refused.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains("InvalidArgument") && compact.contains(r#""reason":"INVALID_REQUEST""#), "{refused}");
    assert!(compact.contains(r#""field":"partner_id""#), "{refused}");

    // Without a token, the same call is refused.
    let (ok, anonymous) = run_grpcurl(&["-plaintext", &addr, "partnerhub.account.v1.AccountService/GetPartner"]);
    assert!(!ok && anonymous.contains("Unauthenticated"), "{anonymous}");

    let status = server.terminate();
    assert!(status.success(), "SIGTERM ends the server with exit code 0, got {status}");
    let log = std::fs::read_to_string(data_dir.join("serve.log")).unwrap();
    assert!(log.contains("stopped"), "graceful shutdown is logged:\n{log}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn a_bad_configuration_is_a_clear_error_at_start() {
    let output = Command::new(partnerhub_tests::binary::partnerhub_binary())
        .arg("serve")
        .env("PARTNERHUB__SERVER__LISTEN_ADR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid configuration") && stderr.contains("listen_adr"), "{stderr}");
}

#[test]
fn migrate_applies_the_schema_once_and_one_service_serves_alone_with_json_logs() {
    let data_dir = std::env::temp_dir().join(format!("partnerhub-process-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).unwrap();
    run_cli(&data_dir, &["migrate"]);
    run_cli(&data_dir, &["migrate"]); // a second run finds nothing to do and succeeds
    assert!(data_dir.join("partnerhub.db").exists());

    let server = ServerProcess::start_with(
        &data_dir,
        &["--service", "account"],
        &[("RUST_LOG", ""), ("PARTNERHUB__LOG__FORMAT", "json")],
    );
    let (ok, health) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service": "partnerhub.account.v1.AccountService"}"#,
        &server.addr.to_string(),
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && health.contains("SERVING"), "{health}");
    let log = server.log();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(object.get("level").is_some() && object.get("timestamp").is_some(), "{line}");
    }
    assert!(log.contains(r#""message":"serving""#), "{log}");
    // The address line goes to stderr, apart from the JSON on stdout.
    let announced = std::fs::read_to_string(&server.stderr_file).unwrap();
    assert_eq!(announced.trim(), format!("partnerhub: serving on {} (account)", server.addr), "{announced}");
    assert!(!log.contains("Applying migration"), "migrate already applied everything:\n{log}");
    assert!(server.terminate().success());
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn the_readme_walkthrough_runs_against_the_real_binary() {
    let data_dir = std::env::temp_dir().join(format!("partnerhub-process-{}", uuid::Uuid::new_v4().simple()));
    let server = ServerProcess::start(&data_dir);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/walkthrough.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("ADDR", server.addr.to_string())
        .env("GRPCURL", grpcurl())
        .env("PARTNERHUB", partnerhub_tests::binary::partnerhub_binary())
        .env("PARTNERHUB__DATA_DIR", &data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&output.stderr), server.log());
    for step in [
        "PARTNER_CHANGE_EVENT_TYPE_SUBMITTED",
        "PARTNER_CHANGE_EVENT_TYPE_APPROVED",
        "PARTNER_CHANGE_EVENT_TYPE_COMPLETED",
    ] {
        assert!(stdout.contains(step), "the history shows {step}:\n{stdout}");
    }
    assert!(stdout.contains("state: PARTNER_CHANGE_STATE_COMPLETED"), "{stdout}");
    // Listed among the scheduled moves, with its time (usually still APPROVED then).
    assert!(stdout.contains("scheduled: pc-") && stdout.contains(" after 20"), "{stdout}");
    assert!(server.terminate().success());
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn the_deploy_files_pass_real_validators() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let tools = pip_tools();

    let hadolint = Command::new(tools.join("bin/hadolint")).arg(deploy.join("Dockerfile")).output().unwrap();
    assert!(hadolint.status.success(), "hadolint: {}", String::from_utf8_lossy(&hadolint.stdout));

    let validate = |files: &[std::path::PathBuf]| {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.33"])
            .args(files)
            .env("PYTHONPATH", tools)
            .output()
            .unwrap()
    };
    let mut manifests: Vec<_> =
        std::fs::read_dir(deploy.join("k8s")).unwrap().map(|entry| entry.unwrap().path()).collect();
    manifests.sort();
    assert!(manifests.len() >= 6, "{manifests:?}");
    let checked = validate(&manifests);
    let output = String::from_utf8_lossy(&checked.stdout).into_owned() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "kubernetes-validate:\n{output}");
    for kind in [
        "deployment/partnerhub-account",
        "deployment/partnerhub-partner-change",
        "deployment/partnerhub-permissions",
        "deployment/partnerhub-webhooks",
        "job/partnerhub-migrate",
    ] {
        assert!(output.contains(&format!("passed for resource {kind}")), "{kind} was not validated:\n{output}");
    }

    // Every setting the ConfigMap gives the pods is one the binary accepts
    // (it refuses unknown keys at start).
    let config_map = std::fs::read_to_string(deploy.join("k8s/config.yaml")).unwrap();
    let settings: Vec<(&str, &str)> = config_map
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(key, _)| key.starts_with("PARTNERHUB__"))
        .collect();
    assert!(settings.len() >= 5, "{settings:?}");
    let accepted = Command::new(partnerhub_tests::binary::partnerhub_binary())
        .args(["token", "--subject", "support:k8s"])
        .envs(settings.iter().copied())
        .env("PARTNERHUB__AUTH__SIGNING_KEY", "c2lnbmluZy1rZXktb2YtYXQtbGVhc3QtdGhpcnR5LXR3by1ieXRlcw==")
        .output()
        .unwrap();
    assert!(accepted.status.success(), "the ConfigMap's settings: {}", String::from_utf8_lossy(&accepted.stderr));

    // The validator does reject a broken manifest (so the pass above means something).
    let broken = std::env::temp_dir().join(format!("partnerhub-broken-{}.yaml", uuid::Uuid::new_v4().simple()));
    let text = std::fs::read_to_string(deploy.join("k8s/account.yaml"))
        .unwrap()
        .replace("containerPort: 50051", "containerPort: fifty");
    std::fs::write(&broken, text).unwrap();
    assert!(!validate(std::slice::from_ref(&broken)).status.success(), "a string port must be refused");
    let _ = std::fs::remove_file(&broken);
}
