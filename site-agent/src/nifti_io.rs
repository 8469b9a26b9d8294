//! Reading and writing NIfTI-1 volumes (`.nii`, `.nii.gz`) as `f32` arrays indexed `[x, y, z]`.
//!
//! Spacing comes from `pixdim`, never from the affine: public datasets exist whose affine is
//! unit-scale while `pixdim` holds the true voxel size.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis, Ix3};
use nifti::writer::WriterOptions;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

/// Largest volume we agree to allocate (voxels); a corrupt header must not trigger a huge allocation.
const MAX_VOXELS: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum NiftiIoError {
    #[error("{path}: cannot read NIfTI: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: nifti::NiftiError,
    },
    #[error("{path}: cannot write NIfTI: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: nifti::NiftiError,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A 3D volume in memory, with the header it came from (kept so that derived label volumes
/// carry the same geometry).
#[derive(Debug, Clone)]
pub struct Volume {
    /// Intensities after `scl_slope`/`scl_inter`, indexed `[x, y, z]`.
    pub data: Array3<f32>,
    /// Voxel size in mm from `pixdim[1..=3]`.
    pub spacing: [f32; 3],
    pub header: NiftiHeader,
    /// The on-disk data type (before scaling).
    pub datatype: NiftiType,
}

impl Volume {
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// Smallest and largest value (NaN ignored); `(0, 0)` for an empty volume.
    pub fn range(&self) -> (f32, f32) {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in self.data.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi { (0.0, 0.0) } else { (lo, hi) }
    }
}

impl NiftiIoError {
    /// What went wrong, without the path (for reports that show the path apart).
    pub fn reason(&self) -> String {
        match self {
            NiftiIoError::Read { source, .. } | NiftiIoError::Write { source, .. } => {
                source.to_string()
            }
            NiftiIoError::Invalid { reason, .. } => reason.clone(),
        }
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> NiftiIoError {
    NiftiIoError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a 3D volume, or a 4D volume with a single frame.
pub fn read_volume(path: &Path) -> Result<Volume, NiftiIoError> {
    let read_err = |source| NiftiIoError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Validate the header before the crate allocates the data it announces.
    let header = NiftiHeader::from_file(path).map_err(read_err)?;
    let ndim = header.dim[0] as usize;
    if !(2..=7).contains(&ndim) {
        return Err(invalid(
            path,
            format!("header dim[0] = {ndim}, expected 3 (or 4 with one frame)"),
        ));
    }
    let dims: Vec<u64> = header.dim[1..=ndim].iter().map(|&d| d as u64).collect();
    if dims.contains(&0) {
        return Err(invalid(
            path,
            format!("header has a zero-sized dimension {dims:?}"),
        ));
    }
    if ndim > 3 && dims[3..].iter().any(|&d| d != 1) {
        return Err(invalid(
            path,
            format!(
                "{ndim}D volume with dims {dims:?}: only 3D volumes or 4D with one frame are supported"
            ),
        ));
    }
    if ndim < 3 {
        return Err(invalid(
            path,
            format!("{ndim}D image: a volume needs 3 dimensions"),
        ));
    }
    let voxels: u64 = dims.iter().product();
    if voxels > MAX_VOXELS {
        return Err(invalid(
            path,
            format!("header announces {voxels} voxels, more than the {MAX_VOXELS} allowed"),
        ));
    }
    let datatype = header.data_type().map_err(read_err)?;
    if !matches!(
        datatype,
        NiftiType::Uint8
            | NiftiType::Int8
            | NiftiType::Int16
            | NiftiType::Uint16
            | NiftiType::Int32
            | NiftiType::Uint32
            | NiftiType::Float32
            | NiftiType::Float64
    ) {
        return Err(invalid(
            path,
            format!("data type {datatype:?} is not supported for images or labels"),
        ));
    }
    let spacing = [header.pixdim[1], header.pixdim[2], header.pixdim[3]];
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(invalid(
            path,
            format!("pixdim spacing {spacing:?} is not positive"),
        ));
    }

    let obj = ReaderOptions::new().read_file(path).map_err(read_err)?;
    let header = obj.header().clone();
    let mut arr = obj.into_volume().into_ndarray::<f32>().map_err(read_err)?;
    // Drop trailing singleton axes (4D with one frame); the array is in NIfTI's Fortran order,
    // which a reshape would not accept.
    while arr.ndim() > 3 {
        let last = Axis(arr.ndim() - 1);
        arr = arr.index_axis_move(last, 0);
    }
    let data = arr
        .into_dimensionality::<Ix3>()
        .map_err(|e| invalid(path, format!("voxel data does not fit dims {dims:?}: {e}")))?;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(invalid(path, "volume holds NaN or infinite values"));
    }
    Ok(Volume {
        data,
        spacing,
        header,
        datatype,
    })
}

/// Element types we write; each maps to its NIfTI data type.
pub trait VoxelType: nifti::DataElement + bytemuck::Pod + Copy {
    fn from_f32_saturating(v: f32) -> Self;
}

macro_rules! voxel_type {
    ($t:ty) => {
        impl VoxelType for $t {
            fn from_f32_saturating(v: f32) -> Self {
                // `as` saturates, which is the clamping we want for out-of-range values.
                v.round() as $t
            }
        }
    };
}
voxel_type!(u8);
voxel_type!(i16);
voxel_type!(u16);
voxel_type!(i32);
impl VoxelType for f32 {
    fn from_f32_saturating(v: f32) -> Self {
        v
    }
}
impl VoxelType for f64 {
    fn from_f32_saturating(v: f32) -> Self {
        v as f64
    }
}

/// Writes `data` (indexed `[x, y, z]`) as type `T`, copying geometry (pixdim, qform, sform) from
/// `reference`. Gzip-compressed when the path ends in `.gz`. Written to a temporary name and
/// renamed, so a crash never leaves a half-written file under the final name.
pub fn write_volume<T: VoxelType>(
    path: &Path,
    data: &Array3<f32>,
    reference: &NiftiHeader,
) -> Result<(), NiftiIoError> {
    let converted = data.mapv(T::from_f32_saturating);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid(path, "output path has no file name"))?;
    let tmp = path.with_file_name(format!(".tmp-{}-{name}", std::process::id()));
    let write_err = |source| NiftiIoError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = WriterOptions::new(&tmp).reference_header(reference);
    if name.ends_with(".gz") {
        options = options
            .compress(true)
            .compression_level(flate2::Compression::fast());
    } else {
        options = options.compress(false);
    }
    options.write_nifti(&converted).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(|e| write_err(nifti::NiftiError::from(e)))?;
    Ok(())
}

/// A header for a new volume with the given spacing and an affine that maps voxel indices to mm
/// (scanner coordinates), both as qform and sform.
pub fn header_with_spacing(spacing: [f32; 3], origin_mm: [f32; 3]) -> NiftiHeader {
    let mut h = NiftiHeader {
        pixdim: [1.0, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0],
        xyzt_units: 2, // mm
        qform_code: 1,
        sform_code: 1,
        quatern_b: 0.0,
        quatern_c: 0.0,
        quatern_d: 0.0,
        quatern_x: origin_mm[0],
        quatern_y: origin_mm[1],
        quatern_z: origin_mm[2],
        ..NiftiHeader::default()
    };
    h.srow_x = [spacing[0], 0.0, 0.0, origin_mm[0]];
    h.srow_y = [0.0, spacing[1], 0.0, origin_mm[1]];
    h.srow_z = [0.0, 0.0, spacing[2], origin_mm[2]];
    h
}
