//! The compute backend chosen on the command line, and running a job on it.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;

/// Where tensors live and kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CPU through burn's Flex backend (gemm products, threads, SIMD) with bert-core's fused
    /// kernels: the fastest on the CPU, the default.
    Flex,
    /// CPU through ndarray (feature `ndarray`, on by default): plain burn operations, the
    /// reference the fused kernels are tested against.
    Ndarray,
    /// Vulkan / Metal / DX12 / WebGPU through wgpu (feature `wgpu`).
    Wgpu,
    /// NVIDIA GPUs through CUDA (feature `cuda`).
    Cuda,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        };
        f.write_str(name)
    }
}

/// Work that is generic over the backend; [`run`] picks the backend at run time.
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and its `device`.
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `job` on the backend `kind`, failing clearly when the binary was built without it or the
/// machine cannot provide it.
pub fn run<J: Job>(kind: BackendKind, job: J) -> Result<J::Output> {
    run_on(kind, 0, job)
}

/// [`run`] on GPU `device_index` of the machine (a data-parallel rank's local rank); the CPU and
/// wgpu backends have one device.
pub fn run_on<J: Job>(kind: BackendKind, device_index: usize, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Flex => job.run::<burn::backend::Flex>(burn::backend::flex::FlexDevice),
        BackendKind::Ndarray => run_ndarray(job),
        BackendKind::Wgpu => run_wgpu(job),
        BackendKind::Cuda => run_cuda(device_index, job),
    }
}

#[cfg(feature = "ndarray")]
fn run_ndarray<J: Job>(job: J) -> Result<J::Output> {
    job.run::<burn::backend::NdArray<f32>>(burn::backend::ndarray::NdArrayDevice::Cpu)
}

#[cfg(not(feature = "ndarray"))]
fn run_ndarray<J: Job>(_job: J) -> Result<J::Output> {
    bail!("this bert-native was built without the `ndarray` feature (CPU backend)")
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: Job>(job: J) -> Result<J::Output> {
    catching_panics("wgpu", || {
        job.run::<burn::backend::Wgpu>(burn::backend::wgpu::WgpuDevice::default())
    })
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: Job>(_job: J) -> Result<J::Output> {
    bail!("this bert-native was built without the `wgpu` feature; rebuild with `--features wgpu`")
}

#[cfg(feature = "cuda")]
fn run_cuda<J: Job>(device_index: usize, job: J) -> Result<J::Output> {
    cuda_driver_present()?;
    keep_kernel_caches(device_index);
    catching_panics("cuda", || {
        job.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice {
            index: device_index,
        })
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: Job>(_device_index: usize, _job: J) -> Result<J::Output> {
    bail!("this bert-native was built without the `cuda` feature; rebuild with `--features cuda`")
}

/// burn-cuda loads the driver lazily and panics on a worker thread when it is absent: check first.
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> Result<()> {
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is closed right away.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY) };
    if handle.is_null() {
        bail!("the CUDA driver (libcuda.so.1) is not installed or not on the library path: no NVIDIA GPU backend on this machine; use --backend flex or wgpu");
    }
    // SAFETY: the handle came from dlopen above.
    unsafe { libc::dlclose(handle) };
    Ok(())
}

/// Keeps burn-cuda's compiled kernels (PTX, which cubecl does not cache by default) and its
/// autotuning results across runs, so that only the first run on a machine pays NVRTC and the
/// autotuner: under `$BERT_RS_KERNEL_CACHE`, else `~/.cache/bert-rs/kernels`, in a folder per
/// cubecl version and GPU architecture. The PTX sits in a subfolder per [`kernel_fingerprint`]
/// (cubecl would hand a changed kernel its old PTX), and older builds' PTX is removed; autotune
/// results are checked by cubecl against the kernels they chose among and stay. A `cubecl.toml`
/// or `burn.toml` found from the working directory up is cubecl's own configuration and is left
/// to it.
#[cfg(feature = "cuda")]
fn keep_kernel_caches(device_index: usize) {
    use burn_cubecl::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};

    let configured_by_file = std::env::current_dir().is_ok_and(|dir| {
        dir.ancestors().any(|dir| {
            ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
                .iter()
                .any(|name| dir.join(name).is_file())
        })
    });
    if configured_by_file {
        return;
    }
    let Some(root) = std::env::var_os("BERT_RS_KERNEL_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::Path::new(&home).join(".cache/bert-rs/kernels"))
        })
    else {
        return;
    };
    let folder = root.join(format!(
        "cubecl-{CUBECL_VERSION}-{}",
        cuda_architecture(device_index).unwrap_or_else(|| "unknown".into())
    ));
    let ptx_folder = ptx_folder_name(&kernel_fingerprint());
    remove_stale_ptx(&folder, &ptx_folder);
    let mut config = CubeClRuntimeConfig::default().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(folder.join(ptx_folder)));
    config.autotune.cache = CacheConfig::File(folder.clone());
    let mut current = CubeClRuntimeConfig::storage().lock();
    // Not yet read by any client: this process's first GPU job.
    if current.is_none() {
        *current = Some(std::sync::Arc::new(config));
        if let Some(notice) = cold_cache_notice(&folder) {
            eprintln!("{notice}");
        }
    }
}

/// Identifies the kernels of this build: bert-shaders' kernel code and the locked versions of
/// every dependency (burn's and cubecl's kernels change with their releases).
#[cfg(feature = "cuda")]
fn kernel_fingerprint() -> String {
    use std::hash::{Hash, Hasher};

    let mut hasher = std::hash::DefaultHasher::new();
    bert_shaders::KERNEL_SOURCE.hash(&mut hasher);
    include_str!("../../Cargo.lock").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The PTX subfolder of the build whose kernels have `fingerprint`.
#[cfg(any(feature = "cuda", test))]
fn ptx_folder_name(fingerprint: &str) -> String {
    format!("ptx-{fingerprint}")
}

/// Removes from the kernel cache `folder` the PTX of other builds than `current` (a
/// `ptx-<fingerprint>` subfolder), and the PTX that bert-native kept before it told builds apart
/// (`cuda`): best effort, as a cache may be shared with other processes.
#[cfg(any(feature = "cuda", test))]
fn remove_stale_ptx(folder: &std::path::Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = name == "cuda" || (name.starts_with("ptx-") && name != current);
        if stale && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What to tell a user whose kernel cache `folder` holds no autotuning results yet, so that
/// minutes without a step are not taken for a hang: the first run on a GPU compiles every kernel
/// with NVRTC and autotunes every new matrix-product shape (on an H200, inference took 2-3 minutes
/// before its first pass and training longer), and later runs reuse what it cached.
#[cfg(any(feature = "cuda", test))]
fn cold_cache_notice(folder: &std::path::Path) -> Option<String> {
    let tuned = std::fs::read_dir(folder.join("autotune"))
        .is_ok_and(|mut entries| entries.next().is_some());
    (!tuned).then(|| {
        format!(
            "note: no CUDA kernels cached in {} yet: this first run on this GPU compiles and \
             autotunes its kernels before the first step, which can take minutes; later runs reuse them",
            folder.display()
        )
    })
}

/// The cubecl release whose kernels are cached (its code generation changes between releases).
#[cfg(feature = "cuda")]
const CUBECL_VERSION: &str = "0.10.0";

/// `sm90` for GPU `device_index` of compute capability 9.0; `None` when the driver cannot say.
#[cfg(feature = "cuda")]
fn cuda_architecture(device_index: usize) -> Option<String> {
    use cudarc::driver::{result, sys::CUdevice_attribute};

    result::init().ok()?;
    let device = result::device::get(device_index as i32).ok()?;
    // SAFETY: `device` is a valid ordinal from cuDeviceGet.
    let (major, minor) = unsafe {
        (
            result::device::get_attribute(
                device,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .ok()?,
            result::device::get_attribute(
                device,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )
            .ok()?,
        )
    };
    Some(format!("sm{major}{minor}"))
}

/// GPU runtimes report a missing adapter or driver by panicking; turn that into an error.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn catching_panics<T>(backend: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            bail!("the {backend} backend failed: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_builds_ptx_and_the_autotune_results_stay() {
        let folder =
            std::env::temp_dir().join(format!("bert-native-ptx-cache-{}", std::process::id()));
        let current = ptx_folder_name("00000000000000aa");
        for name in [current.as_str(), "ptx-00000000000000bb", "cuda", "autotune"] {
            std::fs::create_dir_all(folder.join(name).join("0.10.0")).unwrap();
        }
        std::fs::write(folder.join("ptx-notes.txt"), "a file, not a build's PTX").unwrap();
        remove_stale_ptx(&folder, &current);
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["autotune", current.as_str(), "ptx-notes.txt"]);
        std::fs::remove_dir_all(&folder).unwrap();
        // A cache folder that does not exist yet is no error.
        remove_stale_ptx(&folder, &current);
    }

    #[test]
    fn a_cache_without_autotune_results_is_announced_as_cold() {
        let folder =
            std::env::temp_dir().join(format!("bert-native-kernel-cache-{}", std::process::id()));
        std::fs::create_dir_all(folder.join("autotune")).unwrap();
        let notice = cold_cache_notice(&folder).expect("an empty cache is cold");
        assert!(notice.contains(&folder.display().to_string()), "{notice}");
        std::fs::create_dir_all(folder.join("autotune/0.10.0/device-0-0-cuda")).unwrap();
        assert_eq!(cold_cache_notice(&folder), None);
        std::fs::remove_dir_all(&folder).unwrap();
        assert!(
            cold_cache_notice(&folder).is_some(),
            "a missing folder is cold too"
        );
    }
}
