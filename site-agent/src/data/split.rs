//! Subject-level train/validation/test splits: seeded, and stable across runs and machines.
//!
//! Subjects are ordered by a hash of (seed, subject id), so the order does not depend on the
//! order files were listed in, and adding a subject moves no other subject between splits
//! unless counts are given as fractions. The test split is taken first, so every experiment
//! with the same seed and test size evaluates on the same subjects (paper §2.5).

use serde::{Deserialize, Serialize};

/// A number of subjects, or a fraction of all subjects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Count(usize),
    Fraction(f64),
}

impl Amount {
    fn resolve(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n,
            Amount::Fraction(f) => (f * total as f64).round() as usize,
        }
    }
    fn check(self, name: &str) -> Result<(), String> {
        match self {
            Amount::Fraction(f) if !(0.0..=1.0).contains(&f) => {
                Err(format!("split.{name} = {f}: a fraction must lie in [0, 1]"))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub seed: u64,
    pub test: Amount,
    pub val: Amount,
    /// `None`: every subject not in test or validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Amount>,
    /// Share of the training subjects actually used (transfer-learning sweeps); at least one.
    #[serde(default = "one")]
    pub train_fraction: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            seed: 42,
            test: Amount::Fraction(0.2),
            val: Amount::Fraction(0.2),
            train: None,
            train_fraction: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Split {
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn ids(&self, part: Part) -> &[String] {
        match part {
            Part::Train => &self.train,
            Part::Val => &self.val,
            Part::Test => &self.test,
        }
    }
}

/// FNV-1a: a hash whose value is fixed by its definition (unlike std's `DefaultHasher`), for
/// orders and ids that must be the same in every process and on every machine.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn seeded_hash(seed: u64, text: &str) -> u64 {
    fnv1a(&[&seed.to_le_bytes()[..], text.as_bytes()].concat())
}

impl SplitSpec {
    pub fn validate(&self) -> Result<(), String> {
        self.test.check("test")?;
        self.val.check("val")?;
        if let Some(t) = self.train {
            t.check("train")?;
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return Err(format!(
                "split.train_fraction = {}: must lie in (0, 1]",
                self.train_fraction
            ));
        }
        Ok(())
    }

    pub fn apply(&self, subject_ids: &[String]) -> Result<Split, String> {
        let total = subject_ids.len();
        let mut order: Vec<&String> = subject_ids.iter().collect();
        order.sort_by_key(|id| (seeded_hash(self.seed, id), (*id).clone()));
        let n_test = self.test.resolve(total);
        let n_val = self.val.resolve(total);
        let rest = total.saturating_sub(n_test + n_val);
        let n_train = self.train.map(|t| t.resolve(total)).unwrap_or(rest);
        if n_test + n_val + n_train > total {
            return Err(format!(
                "split asks for {n_train} train + {n_val} val + {n_test} test subjects, but the site has {total}"
            ));
        }
        if n_train == 0 {
            return Err(format!(
                "split leaves no training subject (site has {total})"
            ));
        }
        let used = ((self.train_fraction * n_train as f64).round() as usize).clamp(1, n_train);
        let ids = |r: std::ops::Range<usize>| order[r].iter().map(|s| (*s).clone()).collect();
        Ok(Split {
            test: ids(0..n_test),
            val: ids(n_test..n_test + n_val),
            train: ids(n_test + n_val..n_test + n_val + used),
        })
    }
}
