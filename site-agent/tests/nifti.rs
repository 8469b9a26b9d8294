//! NIfTI reading and writing: data types, scaling, spacing from pixdim, 4D, geometry of written
//! labels, and broken files.

use std::io::{Read, Write};
use std::path::Path;

use fedseg_site::nifti_io::{VoxelType, header_with_spacing, read_volume, write_volume};
use ndarray::{Array3, Array4};
use nifti::writer::WriterOptions;

fn ramp(shape: (usize, usize, usize)) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(x, y, z)| (x + 10 * y + 100 * z) as f32)
}

fn round_trip<T: VoxelType>(dir: &Path, name: &str) {
    let data = ramp((5, 4, 3));
    let header = header_with_spacing([0.75, 0.8, 5.0], [0.0; 3]);
    for ext in ["nii", "nii.gz"] {
        let path = dir.join(format!("{name}.{ext}"));
        write_volume::<T>(&path, &data, &header).unwrap();
        let v = read_volume(&path).unwrap();
        assert_eq!(v.shape(), [5, 4, 3], "{name}.{ext}");
        assert_eq!(v.spacing, [0.75, 0.8, 5.0], "{name}.{ext}");
        // Voxel [x, y, z] must come back at [x, y, z] (NIfTI is x-fastest on disk).
        assert_eq!(v.data[[4, 3, 2]], 234.0, "{name}.{ext}");
        assert_eq!(v.data, data, "{name}.{ext}");
    }
}

#[test]
fn every_common_data_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    round_trip::<u8>(dir.path(), "u8");
    round_trip::<i16>(dir.path(), "i16");
    round_trip::<u16>(dir.path(), "u16");
    round_trip::<i32>(dir.path(), "i32");
    round_trip::<f32>(dir.path(), "f32");
    round_trip::<f64>(dir.path(), "f64");
}

/// NIfTI-1 header offsets of scl_slope and scl_inter.
const SCL_SLOPE_OFFSET: usize = 112;

#[test]
fn scl_slope_and_inter_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaled.nii");
    let data = ramp((4, 3, 2));
    write_volume::<i16>(&path, &data, &header_with_spacing([1.0; 3], [0.0; 3])).unwrap();
    // The writer always stores slope 1; patch the header as a scanner would have written it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SCL_SLOPE_OFFSET..SCL_SLOPE_OFFSET + 4].copy_from_slice(&2.5f32.to_le_bytes());
    bytes[SCL_SLOPE_OFFSET + 4..SCL_SLOPE_OFFSET + 8].copy_from_slice(&(-10.0f32).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    // And the gzipped form of the same file.
    let gz = dir.path().join("scaled.nii.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&bytes).unwrap();
    enc.finish().unwrap();
    for p in [&path, &gz] {
        let v = read_volume(p).unwrap();
        for ((x, y, z), &raw) in data.indexed_iter() {
            assert_eq!(v.data[[x, y, z]], raw * 2.5 - 10.0, "{}", p.display());
        }
    }
}

#[test]
fn spacing_comes_from_pixdim_even_when_the_affine_is_unit_scale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unit_affine.nii.gz");
    let mut h = header_with_spacing([1.56, 1.56, 10.0], [0.0; 3]);
    h.qform_code = 0;
    h.srow_x = [1.0, 0.0, 0.0, 0.0];
    h.srow_y = [0.0, 1.0, 0.0, 0.0];
    h.srow_z = [0.0, 0.0, 1.0, 0.0];
    write_volume::<u16>(&path, &ramp((6, 6, 2)), &h).unwrap();
    let v = read_volume(&path).unwrap();
    assert_eq!(v.spacing, [1.56, 1.56, 10.0]);
    assert_eq!(v.header.srow_x, [1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn four_d_volumes_with_one_frame_read_as_3d_and_more_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = header_with_spacing([1.0, 1.0, 2.0], [0.0; 3]);
    let one = Array4::from_shape_fn((4, 3, 2, 1), |(x, y, z, _)| (x + 10 * y + 100 * z) as f32);
    let p1 = dir.path().join("one_frame.nii.gz");
    WriterOptions::new(&p1)
        .reference_header(&h)
        .write_nifti(&one)
        .unwrap();
    let v = read_volume(&p1).unwrap();
    assert_eq!(v.shape(), [4, 3, 2]);
    assert_eq!(v.data[[3, 2, 1]], 123.0);

    let two = Array4::<f32>::zeros((4, 3, 2, 2));
    let p2 = dir.path().join("two_frames.nii.gz");
    WriterOptions::new(&p2)
        .reference_header(&h)
        .write_nifti(&two)
        .unwrap();
    let err = read_volume(&p2).unwrap_err().to_string();
    assert!(
        err.contains("two_frames.nii.gz") && err.contains("one frame"),
        "{err}"
    );
}

#[test]
fn written_labels_carry_the_image_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("img.nii.gz");
    let mut h = header_with_spacing([1.37, 1.37, 8.0], [-150.0, -140.0, 12.0]);
    h.sform_code = 2;
    h.srow_x = [0.0, -1.37, 0.0, 80.0];
    write_volume::<u16>(&image_path, &ramp((8, 8, 3)), &h).unwrap();
    let image = read_volume(&image_path).unwrap();
    let label_path = dir.path().join("label.nii.gz");
    let label = Array3::from_shape_fn((8, 8, 3), |(x, _, _)| (x % 3) as f32);
    write_volume::<u8>(&label_path, &label, &image.header).unwrap();
    let back = read_volume(&label_path).unwrap();
    assert_eq!(back.spacing, image.spacing);
    assert_eq!(back.header.pixdim, image.header.pixdim);
    assert_eq!(back.header.sform_code, 2);
    assert_eq!(
        [back.header.srow_x, back.header.srow_y, back.header.srow_z],
        [
            image.header.srow_x,
            image.header.srow_y,
            image.header.srow_z
        ]
    );
    assert_eq!(
        [
            back.header.quatern_b,
            back.header.quatern_c,
            back.header.quatern_d,
            back.header.quatern_x
        ],
        [
            image.header.quatern_b,
            image.header.quatern_c,
            image.header.quatern_d,
            image.header.quatern_x
        ]
    );
    assert_eq!(back.datatype, nifti::NiftiType::Uint8);
    assert_eq!(back.data, label);
}

#[test]
fn truncated_and_corrupt_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.nii.gz");
    write_volume::<i16>(
        &good,
        &ramp((32, 32, 8)),
        &header_with_spacing([1.0; 3], [0.0; 3]),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.nii.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_volume(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.nii.gz"), "{err}");

    // An uncompressed file cut inside its voxel data.
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut raw)
        .unwrap();
    let cut = dir.path().join("cut.nii");
    std::fs::write(&cut, &raw[..raw.len() - 100]).unwrap();
    let err = read_volume(&cut).unwrap_err().to_string();
    assert!(err.contains("cut.nii"), "{err}");

    let garbage = dir.path().join("garbage.nii");
    std::fs::write(&garbage, b"this is not a NIfTI file at all, just some text").unwrap();
    let err = read_volume(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.nii"), "{err}");

    // A header announcing an absurd size must not make us allocate it.
    let mut huge = raw.clone();
    for d in 1..=3 {
        huge[40 + 2 * d..42 + 2 * d].copy_from_slice(&30000u16.to_le_bytes());
    }
    let huge_path = dir.path().join("huge.nii");
    std::fs::write(&huge_path, &huge).unwrap();
    let err = read_volume(&huge_path).unwrap_err().to_string();
    assert!(err.contains("huge.nii") && err.contains("voxels"), "{err}");
}
