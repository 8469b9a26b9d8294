//! Mutual TLS: who may connect and what each certificate may call.

use std::time::Duration;

use fedseg_coordinator::pki::{self, PkiLayout, Role};
use fedseg_proto::client::FederationEndpoint;
use fedseg_proto::pb::{self, admin_client::AdminClient, site_client::SiteClient};
use fedseg_tests::Fed;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn join(ep: &FederationEndpoint) -> Result<pb::JoinReply, String> {
    let ch = ep.channel().await.map_err(|e| e.to_string())?;
    SiteClient::new(ch)
        .join(pb::JoinRequest::default())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[test]
fn only_current_certificates_of_the_federation_get_in() {
    let from = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let mut fed = Fed::new(&["emidec"], 3, "");
    // An expired site certificate and a revoked one, from the right CA.
    let layout = fed.pki();
    pki::issue(
        &layout,
        Role::Site,
        "stale",
        from - time::Duration::days(40),
        30,
    )
    .expect("expired cert");
    let revoked = pki::issue(&layout, Role::Site, "lost-laptop", from, 30).expect("cert");
    fed.extra_config = format!("revoked = [\"{}\"]", revoked.fingerprint);
    // A certificate from another federation's CA.
    let other = tempfile::tempdir().expect("tempdir");
    let other_layout = PkiLayout::new(other.path());
    pki::init(&other_layout, "other", &["localhost".into()]).expect("other CA");
    pki::issue(&other_layout, Role::Site, "emidec", from, 30).expect("foreign cert");
    fed.start_coordinator();

    rt().block_on(async {
        // The site's own certificate: joins, and the name comes from the certificate.
        let site = fed.endpoint_for(Role::Site, "emidec");
        assert_eq!(join(&site).await.expect("join").site, "emidec");

        for (what, ep) in [
            ("expired", fed.endpoint_for(Role::Site, "stale")),
            ("revoked", fed.endpoint_for(Role::Site, "lost-laptop")),
            (
                "foreign CA",
                FederationEndpoint {
                    ca: site.ca.clone(),
                    cert: other_layout.bundle(Role::Site, "emidec").join("emidec.crt"),
                    key: other_layout.bundle(Role::Site, "emidec").join("emidec.key"),
                    ..site.clone()
                },
            ),
        ] {
            let r = join(&ep).await;
            assert!(r.is_err(), "{what} certificate was let in: {r:?}");
        }

        // No client certificate at all: the TLS handshake fails.
        let ca = std::fs::read(&site.ca).expect("ca");
        let bare = Channel::from_shared(site.coordinator.clone())
            .expect("uri")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )
            .expect("tls")
            .connect_timeout(Duration::from_secs(5));
        let r = match bare.connect().await {
            Ok(ch) => SiteClient::new(ch)
                .join(pb::JoinRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(r.is_err(), "a client without a certificate was let in");

        // A site certificate may not call the admin service, and an admin not the site one.
        let ch = site.channel().await.expect("channel");
        let denied = AdminClient::new(ch)
            .list_jobs(pb::Empty {})
            .await
            .expect_err("site called admin");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let admin = fed.endpoint_for(Role::Admin, "ops");
        let denied = join(&admin).await.expect_err("admin called site");
        assert!(denied.starts_with("PermissionDenied"), "{denied}");
        let ch = admin.channel().await.expect("channel");
        AdminClient::new(ch)
            .list_jobs(pb::Empty {})
            .await
            .expect("admin lists jobs");
    });

    // Joins and admin actions are in the audit log, refusals in the coordinator's log.
    fed.coordinator.take();
    let store = fedseg_coordinator::store::Store::open(&fed.state_dir().join("db")).expect("sled");
    let audit = store.audit_log().expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e["who"] == "emidec" && e["action"] == "join"),
        "{audit:?}"
    );
    let log = fed.log("coordinator");
    assert!(log.contains("TLS handshake refused"), "{log}");
}

#[test]
fn pki_files_are_private_and_the_ca_is_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = PkiLayout::new(dir.path());
    pki::init(&layout, "f", &["localhost".into()]).expect("init");
    let b =
        pki::issue(&layout, Role::Site, "a", time::OffsetDateTime::now_utc(), 1).expect("issue");
    for key in [layout.ca_key(), layout.server_key(), b.key.clone()] {
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    assert!(pki::init(&layout, "f", &["localhost".into()]).is_err());
    assert!(
        pki::issue(
            &layout,
            Role::Site,
            "../etc",
            time::OffsetDateTime::now_utc(),
            1
        )
        .is_err()
    );
    let peer = pki::peer_from_der(&rustls_pki_der(&b.cert)).expect("peer");
    assert_eq!((peer.name.as_str(), peer.role), ("a", Role::Site));
}

fn rustls_pki_der(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .expect("certificate PEM")
        .to_vec()
}
