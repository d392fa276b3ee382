//! `apunet._apunet`: the library behind the Python package. Each function takes arrays already
//! converted by `apunet/__init__.py` (float32 images, uint8 masks, any memory order), releases
//! the GIL while it computes, and raises the command line's message as ValueError.

use std::path::PathBuf;
use std::sync::Mutex;

use apunet::cli::Command;
use apunet::data::Dataset;
use apunet::data::scan;
use apunet::jobs::predict::{PredictRequest, predict_files};
use apunet::jobs::sample::RunSampling;
use apunet::train::{EpochMetrics, Stopped, Watch, Which};
use ndarray::{Array3, Array4, Axis};
use numpy::{IntoPyArray, PyArray3, PyArray4, PyReadonlyArray3, PyReadonlyArray4};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Samples [N,n,H,W], the mean [N,H,W] and the standard normals behind the samples [N,n,L].
type Sampled<'py> = (Bound<'py, PyArray4<u8>>, Bound<'py, PyArray3<f32>>, Bound<'py, PyArray3<f32>>);
/// One image's samples [n,H,W] and mean [H,W].
type Predicted<'py> = (Bound<'py, PyArray3<u8>>, Bound<'py, numpy::PyArray2<f32>>);
/// A scan's values [D,H,W], spacing and units.
type ScanValues<'py> = (Bound<'py, PyArray3<f32>>, Option<(f64, f64)>, String);

/// The command line's message; a run stopped by Ctrl-C as KeyboardInterrupt.
fn py_err(e: anyhow::Error) -> PyErr {
    if e.downcast_ref::<Stopped>().is_some() {
        return PyKeyboardInterrupt::new_err(e.to_string());
    }
    PyValueError::new_err(format!("{e:#}"))
}

/// Runs the `apunet` command line with `argv` (argv[0] is the program name); returns its exit code.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| match apunet::cli::parse_from(argv) {
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
        Ok(cli) => match apunet::cli::run(cli) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
    })
}

/// A trained run: its directory and how to sample it (the model is read per call).
#[pyclass(frozen, module = "apunet._apunet")]
struct Run {
    sampling: RunSampling,
}

#[pymethods]
impl Run {
    #[new]
    #[pyo3(signature = (path, checkpoint = "best", device = "cpu", allow_mismatch = false))]
    fn new(py: Python<'_>, path: PathBuf, checkpoint: &str, device: &str, allow_mismatch: bool) -> PyResult<Self> {
        let checkpoint = match checkpoint {
            "best" => Which::Best,
            "last" => Which::Last,
            other => return Err(PyValueError::new_err(format!("checkpoint must be 'best' or 'last', got '{other}'"))),
        };
        let sampling = RunSampling { checkpoint, device: device.into(), allow_mismatch, ..RunSampling::for_run(&path) };
        // Fails here, not at the first sample, for a directory that holds no run.
        py.detach(|| sampling.load().map(drop)).map_err(py_err)?;
        Ok(Self { sampling })
    }

    /// The run's config.toml, as text.
    fn config(&self) -> PyResult<String> {
        std::fs::read_to_string(self.sampling.run.join("config.toml")).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// n masks per image of `images` [N,C,H,W] in [0, 1]: samples uint8 [N,n,H,W], mean float32
    /// [N,H,W], and the standard normals eps float32 [N,n,L] whose latents mu + sigma * eps gave them.
    #[pyo3(signature = (images, n, seed, batch_size))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, f32>,
        n: usize,
        seed: u64,
        batch_size: usize,
    ) -> PyResult<Sampled<'py>> {
        let images = images.as_array().to_owned();
        let s = RunSampling { n, seed, batch_size, ..self.sampling.clone() };
        let (masks, mean, noise) = py
            .detach(|| -> anyhow::Result<(Array4<u8>, Array3<f32>, Array3<f32>)> {
                let (device, cfg, model) = s.load()?;
                let (count, _, h, w) = images.dim();
                let latent = model.latent_size(h, w);
                let eps = (0..count).flat_map(|i| apunet::inference::image_eps(seed, i, n, latent)).collect();
                let noise = Array3::from_shape_vec((count, n, latent), eps)?;
                // The dataset's checks and messages: finite, in [0, 1].
                let ds = Dataset::new(images, Array4::zeros((count, 1, h, w)), None, "images")?;
                s.check_channels(&cfg, ds.channels(), "images")?;
                cfg.model.check_size(h, w)?;
                let out = apunet::inference::sample_images(&model, &ds.images, &s.sampling(&cfg)?, &device, |_| {})?;
                Ok((out.masks, out.mean, noise))
            })
            .map_err(py_err)?;
        Ok((masks.into_pyarray(py), mean.into_pyarray(py), noise.into_pyarray(py)))
    }

    /// One image of any size [C,H,W] in [0, 1], patch by patch: samples uint8 [n,H,W], mean float32 [H,W].
    #[pyo3(signature = (image, n, seed, batch_size, overlap))]
    fn predict_array<'py>(
        &self,
        py: Python<'py>,
        image: PyReadonlyArray3<'py, f32>,
        n: usize,
        seed: u64,
        batch_size: usize,
        overlap: f64,
    ) -> PyResult<Predicted<'py>> {
        let image = image.as_array().to_owned();
        let s = RunSampling { n, seed, batch_size, ..self.sampling.clone() };
        let (masks, mean) = py
            .detach(|| -> anyhow::Result<(Array3<u8>, ndarray::Array2<f32>)> {
                let (device, cfg, model) = s.load()?;
                let (c, h, w) = image.dim();
                let ds = Dataset::new(image.insert_axis(Axis(0)), Array4::zeros((1, 1, h, w)), None, "image")?;
                s.check_channels(&cfg, c, "image")?;
                let flat: Vec<f32> = ds.images.iter().copied().collect();
                let patch = (cfg.data.height, cfg.data.width);
                let p = apunet::predict::predict_image(&model, &flat, h, w, patch, &s.sampling(&cfg)?, overlap, &device, |_| {})?;
                let masks = Array3::from_shape_fn((n, h, w), |(k, y, x)| u8::from(p.probs[k][y * w + x] > 0.5));
                Ok((masks, ndarray::Array2::from_shape_vec((h, w), p.mean)?))
            })
            .map_err(py_err)?;
        Ok((masks.into_pyarray(py), mean.into_pyarray(py)))
    }

    /// `apunet predict` on a scan, DICOM series or folder into `out`; one report per scan.
    #[pyo3(signature = (input, out, n, seed, batch_size, overlap, window = None))]
    #[allow(clippy::too_many_arguments)]
    fn predict_path(
        &self,
        py: Python<'_>,
        input: PathBuf,
        out: PathBuf,
        n: usize,
        seed: u64,
        batch_size: usize,
        overlap: f64,
        window: Option<&str>,
    ) -> PyResult<String> {
        let s = RunSampling { n, seed, batch_size, ..self.sampling.clone() };
        let window = window.map(str::parse).transpose().map_err(py_err)?;
        let reports = py
            .detach(|| predict_files(&PredictRequest { overlap, window, ..PredictRequest::new(s, input, out) }, |_| {}))
            .map_err(py_err)?;
        let json: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "dir": r.dir,
                    "slices": r.slices,
                    "height": r.height,
                    "width": r.width,
                    "applied": apunet::data::preprocess::describe(Some(&r.applied)),
                    "dicom_seg": r.dicom_seg.clone().unwrap_or_default(),
                })
            })
            .collect();
        Ok(serde_json::to_string(&json).unwrap_or_default())
    }
}

/// GED, HM-IoU, Dice and ECE of samples [N,n,H,W] against labels [N,A,H,W], as metrics.json (text).
#[pyfunction]
#[pyo3(signature = (samples, labels, seed = 0))]
fn metrics(py: Python<'_>, samples: PyReadonlyArray4<'_, u8>, labels: PyReadonlyArray4<'_, u8>, seed: u64) -> PyResult<String> {
    let (s, l) = (samples.as_array().to_owned(), labels.as_array().to_owned());
    py.detach(|| {
        let report = apunet::eval::report::evaluate(s.view(), l.view(), seed)?;
        Ok(serde_json::to_string(&report.to_json()?)?)
    })
    .map_err(py_err)
}

/// A scan's values [D,H,W] (HU for CT), its in-plane spacing (rows, columns) in mm where the file
/// states it, and its units ("hu" or "unit").
#[pyfunction]
#[pyo3(signature = (path, units = None))]
fn read_scan<'py>(py: Python<'py>, path: PathBuf, units: Option<&str>) -> PyResult<ScanValues<'py>> {
    let units = match units {
        None => None,
        Some("hu") => Some(scan::Units::Hu),
        Some("unit") => Some(scan::Units::Unit),
        Some(other) => return Err(PyValueError::new_err(format!("units must be 'hu' or 'unit', got '{other}'"))),
    };
    let (values, spacing, units) = py
        .detach(|| -> anyhow::Result<_> {
            let s = scan::read_scan_as(&path, units)?;
            let (h, w) = s.slices[0].size();
            if s.slices.iter().any(|sl| sl.size() != (h, w)) {
                anyhow::bail!("{}: slices of different sizes", path.display());
            }
            let values = Array3::from_shape_fn((s.slices.len(), h, w), |(z, y, x)| s.slices[z].values[y * w + x]);
            let units = if s.slices[0].units == scan::Units::Hu { "hu" } else { "unit" };
            Ok((values, s.spacing(), units.to_string()))
        })
        .map_err(py_err)?;
    Ok((values.into_pyarray(py), spacing, units))
}

/// Tells Python of each epoch and stops at Ctrl-C or when the callback raises.
struct PyWatch {
    progress: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
}

impl Watch for PyWatch {
    fn epoch(&self, m: &EpochMetrics) {
        let Some(cb) = &self.progress else { return };
        Python::attach(|py| {
            let call = epoch_dict(py, m).and_then(|d| cb.call1(py, (d,)));
            if let Err(e) = call {
                self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        });
    }

    fn stop(&self) -> bool {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if error.is_none()
            && let Err(e) = Python::attach(|py| py.check_signals())
        {
            *error = Some(e);
        }
        error.is_some()
    }
}

fn epoch_dict<'py>(py: Python<'py>, m: &EpochMetrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", m.epoch)?;
    d.set_item("loss", m.loss)?;
    d.set_item("reconstruction", m.reconstruction)?;
    d.set_item("kl", m.kl)?;
    d.set_item("val_loss", m.val_loss)?;
    d.set_item("val_ged", m.val_ged)?;
    d.set_item("images_per_s", m.images_per_s)?;
    d.set_item("seconds", m.seconds)?;
    Ok(d)
}

/// `apunet train` with `argv` (from "train" on), each epoch passed to `progress`; Ctrl-C stops
/// it between steps (the run resumes from its last saved epoch). Returns the run's epochs.
#[pyfunction]
#[pyo3(signature = (argv, progress = None))]
fn train<'py>(py: Python<'py>, argv: Vec<String>, progress: Option<Py<PyAny>>) -> PyResult<Bound<'py, PyDict>> {
    let cli =
        apunet::cli::parse_from(std::iter::once("apunet".to_string()).chain(argv)).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let Command::Train(args) = cli.command else { return Err(PyValueError::new_err("train takes the flags of `apunet train`")) };
    let watch = PyWatch { progress, error: Mutex::new(None) };
    let result = py.detach(|| apunet::cli::train::train_in_process(&args, &watch));
    if let Some(e) = watch.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let summary = result.map_err(py_err)?;
    let d = PyDict::new(py);
    d.set_item("epochs_run", summary.epochs_run)?;
    d.set_item("target_epochs", summary.target_epochs)?;
    d.set_item("best_epoch", summary.best_epoch)?;
    let history = summary.history.iter().map(|m| epoch_dict(py, m)).collect::<PyResult<Vec<_>>>()?;
    d.set_item("history", history)?;
    Ok(d)
}

#[pymodule]
fn _apunet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the command line: the CPU unless a device is named, messages on stderr.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: at import, before apunet starts any thread of its own.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    // apunet's warnings (a mismatch accepted, a SEG not written) reach stderr as from the command.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "apunet=info,warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    m.add_class::<Run>()?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(read_scan, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}
