//! Mapping a site's label values onto fedseg's classes {0 background, 1 LV blood pool, 2 LV myocardium}.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::layout::Layout;

pub const BACKGROUND: u8 = 0;
pub const BLOOD_POOL: u8 = 1;
pub const MYOCARDIUM: u8 = 2;
pub const NUM_CLASSES: usize = 3;

/// Which on-disk label values make up each class. A value listed nowhere is an error, so that a
/// structure a site forgot to map is never silently trained as background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMap {
    pub background: Vec<i64>,
    pub blood_pool: Vec<i64>,
    pub myocardium: Vec<i64>,
}

impl LabelMap {
    /// The default map of a dataset layout.
    pub fn for_layout(layout: Layout) -> Self {
        match layout {
            // 1 cavity, 2 myocardium, 3 infarction, 4 no-reflow: scar is myocardium.
            Layout::Emidec => Self {
                background: vec![0],
                blood_pool: vec![1],
                myocardium: vec![2, 3, 4],
            },
            // 500 LV blood pool, 200 LV myocardium, 600 RV (background for us).
            Layout::Mscmr => Self {
                background: vec![0, 600],
                blood_pool: vec![500],
                myocardium: vec![200],
            },
            Layout::Generic => Self {
                background: vec![0],
                blood_pool: vec![1],
                myocardium: vec![2],
            },
        }
    }

    /// The class of an on-disk value, if the map knows it.
    pub fn class_of(&self, value: i64) -> Option<u8> {
        if self.blood_pool.contains(&value) {
            Some(BLOOD_POOL)
        } else if self.myocardium.contains(&value) {
            Some(MYOCARDIUM)
        } else if self.background.contains(&value) {
            Some(BACKGROUND)
        } else {
            None
        }
    }

    /// A value listed under two classes makes the map ambiguous.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: BTreeMap<i64, &str> = BTreeMap::new();
        for (name, values) in [
            ("background", &self.background),
            ("blood_pool", &self.blood_pool),
            ("myocardium", &self.myocardium),
        ] {
            for &v in values {
                if let Some(other) = seen.insert(v, name)
                    && other != name
                {
                    return Err(format!(
                        "label value {v} is listed under both {other} and {name}"
                    ));
                }
            }
        }
        if self.blood_pool.is_empty() || self.myocardium.is_empty() {
            return Err(
                "label map needs at least one value for blood_pool and for myocardium".into(),
            );
        }
        Ok(())
    }
}

/// The distinct values of a label volume with their voxel counts; non-integer values are kept
/// apart so they can be reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelValues {
    pub counts: BTreeMap<i64, u64>,
    pub non_integer: u64,
}

impl LabelValues {
    pub fn of(values: impl Iterator<Item = f32>) -> Self {
        let mut out = Self::default();
        for v in values {
            if v.fract() != 0.0 {
                out.non_integer += 1;
            } else {
                *out.counts.entry(v as i64).or_default() += 1;
            }
        }
        out
    }

    /// Values the map does not know.
    pub fn unmapped(&self, map: &LabelMap) -> Vec<i64> {
        self.counts
            .keys()
            .copied()
            .filter(|v| map.class_of(*v).is_none())
            .collect()
    }
}
