//! Every refusal of SPEC.md, at preview (reported, nothing refused), at submit
//! (refused, nothing stored) and when the migration starts (FAILED with the
//! reason, the WABA left where it was), plus support's retry once the cause is fixed.

use partnerhub_proto::{account::v1 as acc, partnerchange::v1 as pc};
use partnerhub_tests::{Backend, ServiceSections, TestApp, on_both_databases, reason};
use pc::PartnerChangeState as St;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::{self, Scenario, get_change, scenario, wait_for_state};

on_both_databases!(
    each_refusal_shows_at_preview_and_stops_submit,
    preview_reports_every_blocker_together,
    the_world_is_checked_again_when_the_migration_starts,
);

/// A change of the world that blocks a partner change, and the reason it gives.
#[derive(Debug, Clone, Copy)]
enum Obstacle {
    Legacy,
    OtherProcessor,
    IncompleteCompanyInfo,
    NotAccepting,
    PaymentMethodRequired,
    NewTerms,
}

impl Obstacle {
    const ALL: [Obstacle; 6] = [
        Obstacle::Legacy,
        Obstacle::OtherProcessor,
        Obstacle::IncompleteCompanyInfo,
        Obstacle::NotAccepting,
        Obstacle::PaymentMethodRequired,
        Obstacle::NewTerms,
    ];

    fn reason(self) -> &'static str {
        match self {
            Obstacle::Legacy => "LEGACY_ACCOUNT",
            Obstacle::OtherProcessor => "PAYMENT_PROCESSOR_MISMATCH",
            Obstacle::IncompleteCompanyInfo => "COMPANY_INFO_INCOMPLETE",
            Obstacle::NotAccepting => "PARTNER_NOT_ACCEPTING",
            Obstacle::PaymentMethodRequired => "PAYMENT_METHOD_REQUIRED",
            Obstacle::NewTerms => "TERMS_NOT_ACCEPTED",
        }
    }

    /// Changes the world so that this obstacle stands.
    async fn raise(self, app: &TestApp, s: &Scenario) {
        let mut support = app.account("support:s");
        let destination = s.destination.partner_id.clone();
        let settings_update = |paths: &[&str], settings: acc::PartnerSettings, processor: acc::PaymentProcessor| {
            acc::UpdatePartnerSettingsRequest {
                partner_id: destination.clone(),
                settings: Some(settings),
                payment_processor: processor.into(),
                update_mask: Some(FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() }),
            }
        };
        let settings = fixtures::settings(false);
        match self {
            Obstacle::Legacy => {
                support
                    .set_client_legacy(acc::SetClientLegacyRequest {
                        client_id: s.client.client_id.clone(),
                        legacy: true,
                    })
                    .await
                    .unwrap();
            }
            Obstacle::OtherProcessor => {
                support
                    .update_partner_settings(settings_update(
                        &["payment_processor"],
                        settings,
                        acc::PaymentProcessor::Adyen,
                    ))
                    .await
                    .unwrap();
            }
            Obstacle::IncompleteCompanyInfo => {
                let info = acc::CompanyInfo { tax_id: String::new(), ..fixtures::complete_company_info() };
                support
                    .update_company_info(acc::UpdateCompanyInfoRequest {
                        client_id: s.client.client_id.clone(),
                        company_info: Some(info),
                    })
                    .await
                    .unwrap();
            }
            Obstacle::NotAccepting => {
                let settings = acc::PartnerSettings { accepting_changes: false, ..settings };
                support
                    .update_partner_settings(settings_update(
                        &["accepting_changes"],
                        settings,
                        acc::PaymentProcessor::Unspecified,
                    ))
                    .await
                    .unwrap();
            }
            Obstacle::PaymentMethodRequired => {
                // A client with no payment method, moving to a partner that requires one.
                let settings = acc::PartnerSettings { requires_payment_method: true, ..settings };
                support
                    .update_partner_settings(settings_update(
                        &["requires_payment_method"],
                        settings,
                        acc::PaymentProcessor::Unspecified,
                    ))
                    .await
                    .unwrap();
            }
            Obstacle::NewTerms => {
                let settings = acc::PartnerSettings { terms_version: "2027-01".into(), ..settings };
                support
                    .update_partner_settings(settings_update(
                        &["terms_version"],
                        settings,
                        acc::PaymentProcessor::Unspecified,
                    ))
                    .await
                    .unwrap();
            }
        }
    }
}

/// A scenario whose client has no payment method (for PAYMENT_METHOD_REQUIRED).
async fn scenario_without_payment_method(app: &TestApp) -> Scenario {
    let mut s = scenario(app, false).await;
    let client = fixtures::client(app, "No card Ltd").await;
    app.account("support:s")
        .update_company_info(acc::UpdateCompanyInfoRequest {
            client_id: client.client_id.clone(),
            company_info: Some(fixtures::complete_company_info()),
        })
        .await
        .unwrap();
    s.waba = fixtures::waba(app, &client.client_id, &s.source.partner_id, &[&fixtures::unique_number()]).await;
    s.client = client;
    s
}

async fn scenario_for(app: &TestApp, obstacle: Obstacle) -> Scenario {
    match obstacle {
        Obstacle::PaymentMethodRequired => scenario_without_payment_method(app).await,
        _ => scenario(app, false).await,
    }
}

async fn preview(app: &TestApp, s: &Scenario, destination: &str) -> pc::PreviewPartnerChangeResponse {
    app.partner_change(&s.client_subject())
        .preview_partner_change(pc::PreviewPartnerChangeRequest {
            waba_id: s.waba.waba_id.clone(),
            destination_partner_id: destination.to_owned(),
            migrate_after: None,
        })
        .await
        .unwrap()
        .into_inner()
}

fn blocker_reasons(preview: &pc::PreviewPartnerChangeResponse) -> Vec<String> {
    preview
        .blockers
        .iter()
        .map(|blocker| blocker.reason().as_str_name().trim_start_matches("BLOCKER_REASON_").to_owned())
        .collect()
}

async fn assert_submit_refused(
    app: &TestApp,
    s: &Scenario,
    request: pc::SubmitPartnerChangeRequest,
    code: Code,
    expected: &str,
) {
    let refused = app.partner_change(&s.client_subject()).submit_partner_change(request).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (code, expected), "{refused:?}");
    let violations = refused.get_details_precondition_failure().map(|failure| failure.violations).unwrap_or_default();
    assert!(violations.iter().any(|violation| violation.r#type == expected), "{violations:?}");
    let listed = s.client_changes(app).await;
    assert!(
        listed.iter().all(|change| change.waba_id != s.waba.waba_id || change.state() != St::PendingApproval),
        "a refused submit stored nothing: {listed:?}"
    );
}

async fn each_refusal_shows_at_preview_and_stops_submit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for obstacle in Obstacle::ALL {
        let s = scenario_for(&app, obstacle).await;
        obstacle.raise(&app, &s).await;
        let preview = preview(&app, &s, &s.destination.partner_id).await;
        if matches!(obstacle, Obstacle::NewTerms) {
            // The preview shows the terms to accept; only a stale acceptance is refused.
            assert_eq!(preview.destination_terms_version, "2027-01");
            assert!(preview.blockers.is_empty(), "{:?}", preview.blockers);
        } else {
            assert_eq!(blocker_reasons(&preview), [obstacle.reason()], "{obstacle:?}");
        }
        assert_submit_refused(
            &app,
            &s,
            s.submit_request(&format!("req-{obstacle:?}")),
            Code::FailedPrecondition,
            obstacle.reason(),
        )
        .await;
    }

    // The legacy message tells the client to contact support; the processor one is SPEC's wording.
    let s = scenario(&app, false).await;
    Obstacle::Legacy.raise(&app, &s).await;
    assert!(preview(&app, &s, &s.destination.partner_id).await.blockers[0].message.contains("contact support"));
    let s = scenario(&app, false).await;
    Obstacle::OtherProcessor.raise(&app, &s).await;
    assert_eq!(
        preview(&app, &s, &s.destination.partner_id).await.blockers[0].message,
        "Destination partner is using a different payment processor."
    );
    let s = scenario(&app, false).await;
    Obstacle::IncompleteCompanyInfo.raise(&app, &s).await;
    assert_eq!(preview(&app, &s, &s.destination.partner_id).await.blockers[0].missing_fields, ["tax_id"]);

    // Unknown destination: NOT_FOUND; the current partner: SAME_PARTNER; an open request: CHANGE_ALREADY_PENDING.
    let s = scenario(&app, false).await;
    assert_eq!(blocker_reasons(&preview(&app, &s, "partner-unknown").await), ["PARTNER_NOT_FOUND"]);
    let unknown = pc::SubmitPartnerChangeRequest {
        destination_partner_id: "partner-unknown".into(),
        ..s.submit_request("req-unknown")
    };
    assert_submit_refused(&app, &s, unknown, Code::NotFound, "PARTNER_NOT_FOUND").await;
    assert_eq!(blocker_reasons(&preview(&app, &s, &s.source.partner_id).await), ["SAME_PARTNER"]);
    let same = pc::SubmitPartnerChangeRequest {
        destination_partner_id: s.source.partner_id.clone(),
        ..s.submit_request("req-same")
    };
    assert_submit_refused(&app, &s, same, Code::FailedPrecondition, "SAME_PARTNER").await;
    let open = s.submit(&app, "req-open").await;
    assert_eq!(blocker_reasons(&preview(&app, &s, &s.destination.partner_id).await), ["CHANGE_ALREADY_PENDING"]);
    let second = app
        .partner_change(&s.client_subject())
        .submit_partner_change(s.submit_request("req-second"))
        .await
        .unwrap_err();
    assert_eq!((second.code(), reason(&second).as_str()), (Code::FailedPrecondition, "CHANGE_ALREADY_PENDING"));
    assert!(second.message().contains(&open.partner_change_id), "{}", second.message());

    // A terms version that is not the current one.
    let s = scenario(&app, false).await;
    let stale =
        pc::SubmitPartnerChangeRequest { accepted_terms_version: "2025-01".into(), ..s.submit_request("req-terms") };
    assert_submit_refused(&app, &s, stale, Code::FailedPrecondition, "TERMS_NOT_ACCEPTED").await;

    // Numbers to grant must be the WABA's own.
    let foreign = pc::SubmitPartnerChangeRequest {
        grant_phone_numbers: vec![fixtures::unique_number()],
        migrate_after: None,
        ..s.submit_request("req-grant")
    };
    let refused = app.partner_change(&s.client_subject()).submit_partner_change(foreign).await.unwrap_err();
    assert_eq!(partnerhub_tests::violated_fields(&refused), ["grant_phone_numbers[0]"]);
}

async fn preview_reports_every_blocker_together(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s = scenario_without_payment_method(&app).await;
    for obstacle in
        [Obstacle::Legacy, Obstacle::OtherProcessor, Obstacle::NotAccepting, Obstacle::PaymentMethodRequired]
    {
        obstacle.raise(&app, &s).await;
    }
    let preview = preview(&app, &s, &s.destination.partner_id).await;
    assert_eq!(
        blocker_reasons(&preview),
        ["LEGACY_ACCOUNT", "PARTNER_NOT_ACCEPTING", "PAYMENT_PROCESSOR_MISMATCH", "PAYMENT_METHOD_REQUIRED"]
    );
    let refused =
        app.partner_change(&s.client_subject()).submit_partner_change(s.submit_request("req")).await.unwrap_err();
    let violations = refused.get_details_precondition_failure().unwrap().violations;
    assert_eq!(violations.len(), 4, "submit lists every blocker too: {violations:?}");
}

async fn the_world_is_checked_again_when_the_migration_starts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let worker = app.migration_worker();
    for obstacle in Obstacle::ALL {
        let s = scenario_for(&app, obstacle).await;
        // (PAYMENT_METHOD_REQUIRED: this client never had a payment method; the
        // partner starts requiring one after approval.)
        let submitted = s.submit(&app, "req").await;
        s.approve(&app, &submitted.partner_change_id).await;
        obstacle.raise(&app, &s).await;
        worker.run_once().await.unwrap();
        let failed = get_change(&app, &submitted.partner_change_id).await;
        assert_eq!(failed.state(), St::Failed, "{obstacle:?}");
        assert!(failed.failure_reason.starts_with(obstacle.reason()), "{obstacle:?}: {}", failed.failure_reason);
        assert_eq!(s.waba_now(&app).await.partner_id, s.source.partner_id, "{obstacle:?}: the WABA stayed");
        let last = fixtures::history(&app, &submitted.partner_change_id).await.pop().unwrap();
        assert_eq!(
            (last.event_type(), last.reason.as_str()),
            (pc::PartnerChangeEventType::Failed, failed.failure_reason.as_str())
        );
    }

    // Support fixes the cause and retries: the change completes.
    let s = scenario(&app, false).await;
    let submitted = s.submit(&app, "req-retry").await;
    s.approve(&app, &submitted.partner_change_id).await;
    Obstacle::Legacy.raise(&app, &s).await;
    worker.run_once().await.unwrap();
    assert_eq!(get_change(&app, &submitted.partner_change_id).await.state(), St::Failed);
    let by_client = app
        .partner_change(&s.client_subject())
        .retry_partner_change(pc::RetryPartnerChangeRequest { partner_change_id: submitted.partner_change_id.clone() })
        .await;
    assert_eq!(by_client.unwrap_err().code(), Code::PermissionDenied, "only support retries");
    app.account("support:s")
        .set_client_legacy(acc::SetClientLegacyRequest { client_id: s.client.client_id.clone(), legacy: false })
        .await
        .unwrap();
    let retried = app
        .partner_change("support:s")
        .retry_partner_change(pc::RetryPartnerChangeRequest { partner_change_id: submitted.partner_change_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap();
    assert_eq!(retried.state(), St::Approved);
    assert!(retried.failure_reason.is_empty());
    worker.run_once().await.unwrap();
    let completed = wait_for_state(&app, &submitted.partner_change_id, St::Completed).await;
    assert_eq!(completed.state(), St::Completed);
    assert_eq!(s.waba_now(&app).await.partner_id, s.destination.partner_id);
}
