//! The federation's PKI: a CA, the coordinator's server certificate, and one client
//! certificate per site or admin. A party's role and name live in its certificate's subject
//! (OU = site | admin, CN = name): the coordinator never takes them from a request field.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Site,
    Admin,
    Coordinator,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Role::Site => "site",
            Role::Admin => "admin",
            Role::Coordinator => "coordinator",
        }
    }
}

/// Who is on the other end of a connection, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the certificate's DER, the handle for revocation.
    pub fingerprint: String,
}

/// The files under a PKI folder.
pub struct PkiLayout {
    pub dir: PathBuf,
}

impl PkiLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("coordinator.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("coordinator.key")
    }
    /// Folder holding one party's bundle (ca.crt, NAME.crt, NAME.key).
    pub fn bundle(&self, role: Role, name: &str) -> PathBuf {
        let group = match role {
            Role::Site => "sites",
            Role::Admin => "admins",
            Role::Coordinator => ".",
        };
        self.dir.join(group).join(name)
    }
}

/// Names go into file names and certificate subjects: keep them plain.
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    #[cfg(unix)]
    {
        // `mode` applies only at creation; tighten an existing file too.
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn subject(name: &str, role: Role) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fedseg");
    dn.push(DnType::OrganizationalUnitName, role.unit());
    dn.push(DnType::CommonName, name);
    dn
}

fn random_serial() -> SerialNumber {
    // 16 random bytes from a fresh key's public bytes would do, but the clock plus a counter
    // hashed is enough for uniqueness within one federation.
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let digest = sha2::Sha256::digest(format!("{now}-{n}-{}", std::process::id()));
    let mut bytes = digest[..16].to_vec();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Creates the CA and the coordinator's server certificate (valid for `hosts`). Refuses to
/// overwrite an existing CA: that would orphan every certificate already issued.
pub fn init(layout: &PkiLayout, federation: &str, hosts: &[String]) -> Result<(), PkiError> {
    if layout.ca_key().exists() {
        return Err(PkiError::Invalid(format!(
            "{} exists: this folder already holds a federation CA",
            layout.ca_key().display()
        )));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = subject(&format!("{federation} CA"), Role::Coordinator);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca.self_signed(&ca_key)?;
    write_file(&layout.ca_cert(), &ca_cert.pem(), false)?;
    write_file(&layout.ca_key(), &ca_key.serialize_pem(), true)?;
    issue_server(layout, hosts)
}

fn load_issuer(layout: &PkiLayout) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&read_file(&layout.ca_key())?)?;
    Ok(Issuer::from_ca_cert_pem(
        &read_file(&layout.ca_cert())?,
        key,
    )?)
}

fn issue_server(layout: &PkiLayout, hosts: &[String]) -> Result<(), PkiError> {
    let issuer = load_issuer(layout)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name = subject("coordinator", Role::Coordinator);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(825);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&layout.server_cert(), &cert.pem(), false)?;
    write_file(&layout.server_key(), &key.serialize_pem(), true)
}

/// What `issue` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedBundle {
    pub name: String,
    pub role: Role,
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub not_after: String,
}

/// Issues a client certificate for a site or an admin, valid from `not_before` for `days`
/// (a test issues one that has already expired this way).
pub fn issue(
    layout: &PkiLayout,
    role: Role,
    name: &str,
    not_before: OffsetDateTime,
    days: i64,
) -> Result<IssuedBundle, PkiError> {
    validate_name(name)?;
    if role == Role::Coordinator {
        return Err(PkiError::Invalid(
            "use `pki init` for the coordinator".into(),
        ));
    }
    let issuer = load_issuer(layout)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(name, role);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_before + Duration::days(days);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer)?;
    let dir = layout.bundle(role, name);
    let bundle = IssuedBundle {
        name: name.to_string(),
        role,
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        fingerprint: fingerprint(cert.der()),
        not_after: params
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        dir,
    };
    write_file(&bundle.ca, &read_file(&layout.ca_cert())?, false)?;
    write_file(&bundle.cert, &cert.pem(), false)?;
    write_file(&bundle.key, &key.serialize_pem(), true)?;
    Ok(bundle)
}

pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// Reads name and role from a certificate the TLS layer has already verified.
pub fn peer_from_der(der: &[u8]) -> Result<Peer, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name =
        first(&mut subject.iter_common_name()).ok_or("client certificate has no common name")?;
    let unit = first(&mut subject.iter_organizational_unit())
        .ok_or("client certificate has no organisational unit (site or admin)")?;
    let role = match unit.as_str() {
        "site" => Role::Site,
        "admin" => Role::Admin,
        other => {
            return Err(format!(
                "client certificate role {other:?} is neither site nor admin"
            ));
        }
    };
    validate_name(&name).map_err(|e| e.to_string())?;
    Ok(Peer {
        name,
        role,
        fingerprint: fingerprint(der),
    })
}
