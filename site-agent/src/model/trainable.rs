//! Which parameters train: block names and ranges such as `enc:0-4,dec:0-1,ds,head`, or `all`.
//! The paper's transfer learning fine-tunes chosen encoder or decoder blocks (§2.4).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    All,
    Encoder(usize, usize),
    Decoder(usize, usize),
    DeepSupervision,
    Head,
    /// Instance-norm affine parameters (`*.norm*.weight|bias`).
    Norm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainableSet {
    parts: Vec<Part>,
    text: String,
}

impl TrainableSet {
    pub fn all() -> Self {
        Self {
            parts: vec![Part::All],
            text: "all".into(),
        }
    }

    /// Parses `all` or a comma-separated list of `enc:A-B`, `enc:A`, `dec:A-B`, `ds`, `head`,
    /// `norm`. Block indices are checked against the model's number of levels.
    pub fn parse(text: &str, levels: usize) -> Result<Self, String> {
        let mut parts = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, range) = match item.split_once(':') {
                Some((k, r)) => (k, Some(r)),
                None => (item, None),
            };
            let blocks = |max: usize, what: &str| -> Result<(usize, usize), String> {
                let r =
                    range.ok_or_else(|| format!("{item}: give a block range, e.g. {what}:0-2"))?;
                let (a, b) = match r.split_once('-').filter(|(a, _)| *a != "last") {
                    Some((a, b)) => (a, b),
                    None => (r, r),
                };
                // `last` and `last-K` count from the model's deepest block, so one plan
                // ("enc:0-last-1": all but the bottleneck) fits every model size.
                let parse = |s: &str| {
                    let s = s.trim();
                    let bad = || format!("{item}: {s:?} is not a block index");
                    match s.strip_prefix("last") {
                        Some("") => Ok(max.saturating_sub(1)),
                        Some(k) => {
                            let k: usize = k
                                .strip_prefix('-')
                                .and_then(|k| k.parse().ok())
                                .ok_or_else(bad)?;
                            (max.saturating_sub(1)).checked_sub(k).ok_or_else(|| {
                                format!(
                                    "{item}: the model has {what} blocks 0..={}",
                                    max.saturating_sub(1)
                                )
                            })
                        }
                        None => s.parse::<usize>().map_err(|_| bad()),
                    }
                };
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b || b >= max {
                    return Err(format!(
                        "{item}: the model has {what} blocks 0..={}",
                        max.saturating_sub(1)
                    ));
                }
                Ok((a, b))
            };
            parts.push(match kind {
                "all" => Part::All,
                "enc" => {
                    let (a, b) = blocks(levels, "enc")?;
                    Part::Encoder(a, b)
                }
                "dec" => {
                    let (a, b) = blocks(levels - 1, "dec")?;
                    Part::Decoder(a, b)
                }
                "ds" => Part::DeepSupervision,
                "head" => Part::Head,
                "norm" => Part::Norm,
                _ => {
                    return Err(format!(
                        "{item}: unknown block kind {kind:?} (all, enc, dec, ds, head, norm)"
                    ));
                }
            });
        }
        if parts.is_empty() {
            return Err(format!("trainable set {text:?} names no block"));
        }
        Ok(Self {
            parts,
            text: text.to_string(),
        })
    }

    /// Whether the parameter with this public name trains.
    pub fn contains(&self, name: &str) -> bool {
        let mut it = name.split('.');
        let kind = it.next().unwrap_or("");
        let index: Option<usize> = it.next().and_then(|s| s.parse().ok());
        self.parts.iter().any(|p| match p {
            Part::All => true,
            Part::Encoder(a, b) => kind == "enc" && index.is_some_and(|i| (*a..=*b).contains(&i)),
            Part::Decoder(a, b) => kind == "dec" && index.is_some_and(|i| (*a..=*b).contains(&i)),
            Part::DeepSupervision => kind == "ds",
            Part::Head => kind == "head",
            Part::Norm => name.contains(".norm"),
        })
    }
}

impl fmt::Display for TrainableSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_counts_from_the_deepest_block() {
        // 5 levels: encoder blocks 0..=4, decoder blocks 0..=3.
        let s = TrainableSet::parse("enc:0-last-1,dec:last", 5).expect("parse");
        assert!(s.contains("enc.3.conv1.weight"));
        assert!(!s.contains("enc.4.conv1.weight"));
        assert!(s.contains("dec.3.up.weight"));
        assert!(!s.contains("dec.2.up.weight"));
        let e = TrainableSet::parse("enc:0-last-9", 5).expect_err("too far back");
        assert!(e.contains("0..=4"), "{e}");
        let e = TrainableSet::parse("enc:0-lastx", 5).expect_err("garbage");
        assert!(e.contains("not a block index"), "{e}");
    }
}
