//! Site datasets end to end: synthetic centers written in each layout and loaded back through
//! the same path real data takes; label maps; and every bad-input case.

use std::path::{Path, PathBuf};

use fedseg_site::data::labels::{BLOOD_POOL, MYOCARDIUM};
use fedseg_site::data::{DataError, Layout, SiteConfig, prepare_site};
use fedseg_site::inspect::inspect;
use fedseg_site::nifti_io::{header_with_spacing, read_volume, write_volume};
use fedseg_site::synth::{Modality, SynthOptions, synthesize};
use ndarray::Array3;

fn synth(dir: &Path, center: &str, subjects: usize) -> PathBuf {
    synthesize(&SynthOptions {
        out: dir.to_path_buf(),
        centers: vec![center.to_string()],
        subjects,
        seed: 7,
        modality: Modality::Lge,
    })
    .unwrap();
    dir.join(center).join("site.toml")
}

fn raw_label_values(path: &Path) -> Vec<i64> {
    let v = read_volume(path).unwrap();
    let mut vals: Vec<i64> = v.data.iter().map(|&x| x as i64).collect();
    vals.sort_unstable();
    vals.dedup();
    vals
}

/// What Table 1 and the layout promise for a center.
type Expected = (
    Layout,
    (f32, f32),     // in-plane spacing range
    (f32, f32),     // slice thickness range
    (usize, usize), // slice count range
    Vec<i64>,       // raw label values
);

fn expectations(center: &str) -> Expected {
    match center {
        "emidec" => (
            Layout::Emidec,
            (1.37, 1.88),
            (8.0, 13.0),
            (4, 10),
            vec![0, 1, 2, 3, 4],
        ),
        "mscmr" => (
            Layout::Mscmr,
            (0.75, 0.75),
            (5.0, 5.0),
            (10, 18),
            vec![0, 200, 500, 600],
        ),
        "vh" => (
            Layout::Generic,
            (1.48, 1.68),
            (10.0, 10.0),
            (8, 15),
            vec![0, 1, 2],
        ),
        "stpau" => (
            Layout::Generic,
            (1.18, 1.18),
            (5.0, 5.0),
            (18, 24),
            vec![0, 1, 2],
        ),
        _ => unreachable!(),
    }
}

#[test]
fn each_center_round_trips_through_its_layout() {
    for center in ["emidec", "mscmr", "vh", "stpau"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = synth(dir.path(), center, 3);
        let cfg = SiteConfig::load(&cfg_path).unwrap();
        let (layout, spacing, thickness, slices, raw_values) = expectations(center);
        assert_eq!(cfg.data.layout, layout, "{center}");

        let report = inspect(&cfg).unwrap();
        assert!(report.can_train, "{center}: {report}");
        assert_eq!(report.subjects.len(), 3, "{center}");
        assert!(
            report.problems.is_empty(),
            "{center}: {:?}",
            report.problems
        );
        let mut seen_raw = Vec::new();
        for s in &report.subjects {
            let [sx, sy, sz] = s.spacing_mm;
            assert!(
                sx >= spacing.0 - 1e-3 && sx <= spacing.1 + 1e-3 && sx == sy,
                "{center} {s:?}"
            );
            assert!(
                sz >= thickness.0 - 1e-3 && sz <= thickness.1 + 1e-3,
                "{center} {s:?}"
            );
            assert!(
                (slices.0..=slices.1).contains(&s.shape[2]),
                "{center} {s:?}"
            );
            seen_raw.extend(raw_label_values(s.label.as_ref().unwrap()));
        }
        seen_raw.sort_unstable();
        seen_raw.dedup();
        for v in &seen_raw {
            assert!(raw_values.contains(v), "{center}: unexpected raw label {v}");
        }
        // Background, blood pool and myocardium always appear in the on-disk values.
        assert!(seen_raw.len() >= 3, "{center}: {seen_raw:?}");

        let site = prepare_site(&cfg, true).unwrap();
        assert_eq!(site.subjects.len(), 3);
        for s in &site.subjects {
            let labels = s.labels.as_ref().unwrap();
            assert_eq!(labels.len(), s.shape[2]);
            assert_eq!(s.slices.len(), s.shape[2]);
            let mut has = [false; 3];
            for (img, lab) in s.slices.iter().zip(labels) {
                assert_eq!((img.width, img.height), (128, 128));
                assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
                for &c in &lab.data {
                    assert!(c <= MYOCARDIUM, "{center}: class {c}");
                    has[c as usize] = true;
                }
            }
            assert!(
                has[BLOOD_POOL as usize] && has[MYOCARDIUM as usize],
                "{center} {}",
                s.id
            );
        }
        let n = site.split.train.len() + site.split.val.len() + site.split.test.len();
        assert_eq!(n, 3, "{center}");
    }
}

#[test]
fn synthesis_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    synth(a.path(), "vh", 3);
    synth(b.path(), "vh", 3);
    for name in ["vh_001", "vh_002"] {
        let p = |d: &Path| d.join("vh/images").join(format!("{name}.nii.gz"));
        assert_eq!(
            read_volume(&p(a.path())).unwrap().data,
            read_volume(&p(b.path())).unwrap().data
        );
    }
}

/// A generic-layout site with two good subjects, written by hand.
fn generic_site(dir: &Path, label_values: [f32; 3]) -> PathBuf {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    let h = header_with_spacing([1.25, 1.25, 8.0], [0.0; 3]);
    for name in ["a", "b"] {
        let img = Array3::from_shape_fn((40, 40, 3), |(x, y, _)| ((x * y) % 17) as f32);
        let lab = Array3::from_shape_fn((40, 40, 3), |(x, y, _)| {
            let r2 = (x as f32 - 20.0).powi(2) + (y as f32 - 20.0).powi(2);
            if r2 < 36.0 {
                label_values[1]
            } else if r2 < 100.0 {
                label_values[2]
            } else {
                label_values[0]
            }
        });
        write_volume::<i16>(&dir.join(format!("images/{name}.nii.gz")), &img, &h).unwrap();
        write_volume::<u8>(&dir.join(format!("labels/{name}.nii.gz")), &lab, &h).unwrap();
    }
    let cfg = dir.join("site.toml");
    std::fs::write(
        &cfg,
        "[site]\nname = \"test\"\n[data]\nroot = \".\"\nlayout = \"generic\"\n\
         [split]\nseed = 1\ntest = 0\nval = 0\n",
    )
    .unwrap();
    cfg
}

#[test]
fn label_map_can_be_overridden_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = generic_site(dir.path(), [0.0, 7.0, 9.0]);
    let cfg = SiteConfig::load(&cfg_path).unwrap();
    let err = prepare_site(&cfg, true).unwrap_err().to_string();
    assert!(
        err.contains("[7, 9]") && err.contains("not in the label map"),
        "{err}"
    );

    let mut text = std::fs::read_to_string(&cfg_path).unwrap();
    text.push_str("[labels]\nbackground = [0]\nblood_pool = [7]\nmyocardium = [9]\n");
    std::fs::write(&cfg_path, text).unwrap();
    let site = prepare_site(&SiteConfig::load(&cfg_path).unwrap(), true).unwrap();
    let lab = &site.subjects[0].labels.as_ref().unwrap()[0];
    assert!(lab.data.contains(&BLOOD_POOL) && lab.data.contains(&MYOCARDIUM));
}

#[test]
fn a_broken_subject_is_skipped_and_reported_and_the_rest_loads() {
    type Breakage = fn(&Path);
    let cases: [(&str, Breakage, &str); 5] = [
        (
            "truncated image",
            |d| {
                let p = d.join("images/c.nii.gz");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
            },
            "images/c.nii.gz",
        ),
        (
            "shape mismatch",
            |d| {
                let h = header_with_spacing([1.25, 1.25, 8.0], [0.0; 3]);
                write_volume::<u8>(&d.join("labels/c.nii.gz"), &Array3::zeros((40, 39, 3)), &h)
                    .unwrap();
            },
            "label shape [40, 39, 3] differs from image shape [40, 40, 3]",
        ),
        (
            "spacing mismatch",
            |d| {
                let h = header_with_spacing([1.0, 1.0, 8.0], [0.0; 3]);
                write_volume::<u8>(&d.join("labels/c.nii.gz"), &Array3::zeros((40, 40, 3)), &h)
                    .unwrap();
            },
            "label spacing",
        ),
        (
            "unknown label value",
            |d| {
                let h = header_with_spacing([1.25, 1.25, 8.0], [0.0; 3]);
                write_volume::<u8>(
                    &d.join("labels/c.nii.gz"),
                    &Array3::from_elem((40, 40, 3), 5.0),
                    &h,
                )
                .unwrap();
            },
            "label values [5] are not in the label map",
        ),
        (
            "missing label",
            |d| {
                std::fs::remove_file(d.join("labels/c.nii.gz")).unwrap();
            },
            "no label file found",
        ),
    ];
    for (name, break_it, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = generic_site(dir.path(), [0.0, 1.0, 2.0]);
        // A third subject, then break it.
        std::fs::copy(
            dir.path().join("images/a.nii.gz"),
            dir.path().join("images/c.nii.gz"),
        )
        .unwrap();
        std::fs::copy(
            dir.path().join("labels/a.nii.gz"),
            dir.path().join("labels/c.nii.gz"),
        )
        .unwrap();
        break_it(dir.path());
        let cfg = SiteConfig::load(&cfg_path).unwrap();
        let site = prepare_site(&cfg, true).unwrap();
        let ids: Vec<&str> = site.subjects.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "{name}");
        assert_eq!(site.problems.len(), 1, "{name}: {:?}", site.problems);
        let problem = site.problems[0].to_string();
        assert!(
            problem.contains("subject c") && problem.contains(expected),
            "{name}: {problem}"
        );
        // inspect reports the same problem and the site can still train.
        let report = inspect(&cfg).unwrap();
        assert_eq!(report.problems.len(), 1, "{name}");
        assert!(report.can_train, "{name}");
    }
}

#[test]
fn unlabelled_subjects_load_for_inference() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = generic_site(dir.path(), [0.0, 1.0, 2.0]);
    std::fs::remove_dir_all(dir.path().join("labels")).unwrap();
    let site = prepare_site(&SiteConfig::load(&cfg_path).unwrap(), false).unwrap();
    assert_eq!(site.subjects.len(), 2);
    assert!(site.subjects.iter().all(|s| s.labels.is_none()));
}

#[test]
fn empty_or_missing_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["emidec", "mscmr", "generic"] {
        let root = dir.path().join(layout);
        std::fs::create_dir_all(root.join("images")).unwrap();
        let cfg = root.join("site.toml");
        std::fs::write(
            &cfg,
            format!("[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"{layout}\"\n"),
        )
        .unwrap();
        let err = prepare_site(&SiteConfig::load(&cfg).unwrap(), true).unwrap_err();
        assert!(
            matches!(err, DataError::NoSubjects { .. }),
            "{layout}: {err}"
        );
        assert!(
            err.to_string().contains(&root.display().to_string()),
            "{err}"
        );
    }
    let cfg = dir.path().join("missing.toml");
    std::fs::write(
        &cfg,
        "[site]\nname = \"x\"\n[data]\nroot = \"nowhere\"\nlayout = \"emidec\"\n",
    )
    .unwrap();
    let err = prepare_site(&SiteConfig::load(&cfg).unwrap(), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("site.toml");
    for (text, expected) in [
        (
            "[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"nii\"\n",
            "unknown variant",
        ),
        (
            "[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"emidec\"\n[preprocess]\nspacing_mm = 0\nsize = 128\n",
            "spacing_mm",
        ),
        (
            "[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"emidec\"\ntypo = 1\n",
            "typo",
        ),
        (
            "[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"emidec\"\n[labels]\nbackground = [0]\nblood_pool = [1]\nmyocardium = [1, 2]\n",
            "both",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let err = SiteConfig::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("site.toml") && err.contains(expected), "{err}");
    }
}

#[test]
fn paper_splits_are_expressible() {
    let cfg_text = |split: &str| {
        format!(
            "[site]\nname = \"x\"\n[data]\nroot = \".\"\nlayout = \"emidec\"\n[split]\n{split}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("site.toml");
    let ids: Vec<String> = (1..=100).map(|i| format!("Case_{i:03}")).collect();
    // Table 2 (EMIDEC 68/17/15) and Table 4 (42 + 10, same 15 test subjects).
    std::fs::write(&cfg_path, cfg_text("seed = 3\ntest = 15\nval = 17")).unwrap();
    let t2 = SiteConfig::load(&cfg_path)
        .unwrap()
        .split
        .apply(&ids)
        .unwrap();
    assert_eq!((t2.train.len(), t2.val.len(), t2.test.len()), (68, 17, 15));
    std::fs::write(
        &cfg_path,
        cfg_text("seed = 3\ntest = 15\nval = 10\ntrain = 42"),
    )
    .unwrap();
    let t4 = SiteConfig::load(&cfg_path)
        .unwrap()
        .split
        .apply(&ids)
        .unwrap();
    assert_eq!((t4.train.len(), t4.val.len(), t4.test.len()), (42, 10, 15));
    assert_eq!(
        t2.test, t4.test,
        "every experiment tests on the same subjects"
    );
}
