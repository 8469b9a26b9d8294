//! Where a site's images and labels live on disk, for each supported dataset layout.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DataError;
use super::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `Case_*/Images/Case_*.nii.gz` + `Case_*/Contours/Case_*.nii.gz`
    Emidec,
    /// `patient*_LGE.nii.gz` + `patient*_LGE_manual.nii.gz`
    Mscmr,
    /// `images/NAME.nii.gz` + `labels/NAME.nii.gz`
    Generic,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Emidec => "emidec",
            Layout::Mscmr => "mscmr",
            Layout::Generic => "generic",
        })
    }
}

/// One subject's files. `label` is `None` for unlabelled (inference-only) subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectFiles {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

/// Subjects found, sorted by id, and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct Discovery {
    pub subjects: Vec<SubjectFiles>,
    pub problems: Vec<Problem>,
}

const NIFTI_EXTENSIONS: [&str; 2] = [".nii.gz", ".nii"];

/// The name without its NIfTI extension, if it has one.
fn nifti_stem(name: &str) -> Option<&str> {
    NIFTI_EXTENSIONS
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
}

/// `dir/stem.nii.gz` or `dir/stem.nii`, whichever exists.
fn find_nifti(dir: &Path, stem: &str) -> Option<PathBuf> {
    NIFTI_EXTENSIONS
        .iter()
        .map(|ext| dir.join(format!("{stem}{ext}")))
        .find(|p| p.is_file())
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn discover(layout: Layout, root: &Path) -> Result<Discovery, DataError> {
    if !root.is_dir() {
        return Err(DataError::MissingDataDir(root.to_path_buf()));
    }
    let found = match layout {
        Layout::Emidec => discover_emidec(root)?,
        Layout::Mscmr => discover_mscmr(root)?,
        Layout::Generic => discover_generic(root)?,
    };
    if found.subjects.is_empty() {
        return Err(DataError::NoSubjects {
            root: root.to_path_buf(),
            layout,
            problems: found.problems,
        });
    }
    Ok(found)
}

fn discover_emidec(root: &Path) -> Result<Discovery, DataError> {
    let mut out = Discovery::default();
    for (name, path) in list_dir(root)? {
        if !name.starts_with("Case_") || !path.is_dir() {
            continue;
        }
        let Some(image) = find_nifti(&path.join("Images"), &name) else {
            out.problems.push(Problem::subject(
                &name,
                &path.join("Images").join(format!("{name}.nii.gz")),
                "image file missing",
            ));
            continue;
        };
        let label = find_nifti(&path.join("Contours"), &name);
        out.subjects.push(SubjectFiles {
            id: name,
            image,
            label,
        });
    }
    Ok(out)
}

fn discover_mscmr(root: &Path) -> Result<Discovery, DataError> {
    let mut out = Discovery::default();
    let entries = list_dir(root)?;
    for (name, path) in &entries {
        let Some(stem) = nifti_stem(name) else {
            continue;
        };
        if !stem.starts_with("patient") {
            continue;
        }
        if let Some(id) = stem.strip_suffix("_LGE") {
            let label = find_nifti(root, &format!("{stem}_manual"));
            out.subjects.push(SubjectFiles {
                id: id.to_string(),
                image: path.clone(),
                label,
            });
        } else if let Some(image_stem) = stem.strip_suffix("_manual")
            && find_nifti(root, image_stem).is_none()
        {
            out.problems
                .push(Problem::subject(image_stem, path, "label without an image"));
        }
    }
    Ok(out)
}

fn discover_generic(root: &Path) -> Result<Discovery, DataError> {
    let mut out = Discovery::default();
    let images = root.join("images");
    let labels = root.join("labels");
    if !images.is_dir() {
        return Err(DataError::MissingDataDir(images));
    }
    for (name, path) in list_dir(&images)? {
        let Some(stem) = nifti_stem(&name) else {
            continue;
        };
        let label = find_nifti(&labels, stem);
        out.subjects.push(SubjectFiles {
            id: stem.to_string(),
            image: path,
            label,
        });
    }
    if labels.is_dir() {
        for (name, path) in list_dir(&labels)? {
            let Some(stem) = nifti_stem(&name) else {
                continue;
            };
            if find_nifti(&images, stem).is_none() {
                out.problems
                    .push(Problem::subject(stem, &path, "label without an image"));
            }
        }
    }
    Ok(out)
}

/// Where `synth` writes a subject of this layout (image, label).
pub fn subject_paths(layout: Layout, root: &Path, id: &str) -> (PathBuf, PathBuf) {
    match layout {
        Layout::Emidec => {
            let case = root.join(id);
            (
                case.join("Images").join(format!("{id}.nii.gz")),
                case.join("Contours").join(format!("{id}.nii.gz")),
            )
        }
        Layout::Mscmr => (
            root.join(format!("{id}_LGE.nii.gz")),
            root.join(format!("{id}_LGE_manual.nii.gz")),
        ),
        Layout::Generic => (
            root.join("images").join(format!("{id}.nii.gz")),
            root.join("labels").join(format!("{id}.nii.gz")),
        ),
    }
}
