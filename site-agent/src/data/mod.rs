//! A site's data: configuration, on-disk layouts, label maps, loading and splits.

pub mod config;
pub mod dataset;
pub mod labels;
pub mod layout;
pub mod problem;
pub mod split;

use std::path::PathBuf;

pub use config::SiteConfig;
pub use dataset::{PreparedSite, PreparedSubject, Subject, load_subject, prepare_site};
pub use labels::LabelMap;
pub use layout::{Layout, SubjectFiles, discover};
pub use problem::Problem;
pub use split::{Part, Split, SplitSpec};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid site config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("data folder {0} does not exist")]
    MissingDataDir(PathBuf),
    #[error("no subjects found in {root} for layout {layout}{}", problems_suffix(.problems))]
    NoSubjects {
        root: PathBuf,
        layout: Layout,
        problems: Vec<Problem>,
    },
    #[error("site split: {0}")]
    Split(String),
    #[error("no usable subject left:{}", problems_suffix(.0))]
    NothingUsable(Vec<Problem>),
}

fn problems_suffix(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}
