//! The configuration reference (docs/configuration.md) cannot drift from the code: each of its
//! TOML blocks parses with the program's own parser (which refuses unknown keys), and every
//! key the parser accepts — asked of the parser itself — is written in the block.

use std::collections::BTreeSet;

use fedseg_coordinator::config::CoordinatorConfig;
use fedseg_proto::client::FederationEndpoint;
use fedseg_site::data::SiteConfig;

const REFERENCE: &str = include_str!("../../docs/configuration.md");

/// The fenced TOML block following `heading`.
fn block(heading: &str) -> String {
    let at = REFERENCE
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/configuration.md"));
    let rest = &REFERENCE[at..];
    let start = rest.find("```toml\n").expect("a toml block") + 8;
    let end = rest[start..].find("```").expect("closing fence");
    rest[start..start + end].to_string()
}

/// The keys a parser accepts in the table at `path`, read from its refusal of an unknown key
/// ("unknown field `…`, expected one of `a`, `b`, …").
fn accepted<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    doc: &toml::Table,
    path: &[&str],
) -> BTreeSet<String> {
    let mut probe = doc.clone();
    let mut table = &mut probe;
    for p in path {
        table = table
            .get_mut(*p)
            .and_then(|v| v.as_table_mut())
            .unwrap_or_else(|| panic!("no [{}] in the reference", path.join(".")));
    }
    table.insert("zz_probe".into(), toml::Value::Integer(1));
    let text = toml::to_string(&probe).expect("serialise");
    let err = toml::from_str::<T>(&text).expect_err("an unknown key must be refused");
    let msg = err.to_string();
    let list = msg
        .split("expected one of")
        .nth(1)
        .or_else(|| msg.split("expected").nth(1))
        .unwrap_or_else(|| panic!("refusal without the accepted keys: {msg}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn keys(doc: &toml::Table, path: &[&str]) -> BTreeSet<String> {
    let mut t = doc;
    for p in path {
        t = t.get(*p).and_then(|v| v.as_table()).expect("table");
    }
    t.keys().cloned().collect()
}

fn check<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    doc: &toml::Table,
    path: &[&str],
    aliases: &[&str],
) {
    let documented = keys(doc, path);
    let missing: Vec<_> = accepted::<T>(doc, path)
        .into_iter()
        .filter(|k| !documented.contains(k) && !aliases.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md, [{}]: accepted but not documented: {missing:?}",
        path.join(".")
    );
}

#[test]
fn the_coordinator_reference_is_complete_and_valid() {
    let text = block("## `coordinator.toml`");
    let cfg: CoordinatorConfig = toml::from_str(&text).expect("reference parses");
    cfg.validate().expect("reference validates");
    let doc: toml::Table = toml::from_str(&text).expect("toml");
    check::<CoordinatorConfig>(&doc, &[], &["metrics_listen"]);
}

#[test]
fn the_site_reference_is_complete_and_valid() {
    let text = block("## `site.toml`");
    let cfg: SiteConfig = toml::from_str(&text).expect("reference parses");
    cfg.validate().expect("reference validates");
    let doc: toml::Table = toml::from_str(&text).expect("toml");
    check::<SiteConfig>(&doc, &[], &[]);
    for section in [
        "site",
        "data",
        "labels",
        "preprocess",
        "split",
        "augment",
        "train",
        "federation",
    ] {
        check::<SiteConfig>(&doc, &[section], &[]);
    }
    check::<SiteConfig>(&doc, &["train", "unet"], &[]);
}

#[test]
fn the_admin_reference_is_complete_and_valid() {
    let text = block("## `admin.toml`");
    let _: FederationEndpoint = toml::from_str(&text).expect("reference parses");
    let doc: toml::Table = toml::from_str(&text).expect("toml");
    check::<FederationEndpoint>(&doc, &[], &[]);
}
