//! What the studio's tests share: a studio running in the test process on a free loopback port, a held-out face,
//! and `glowd edit`'s output for the same face and strengths.
use glowd::settings::{GateSettings, ImageSettings};
use glowd::studio::client::{self, Response};
use glowd::studio::{Options, Studio};
use glowd::worker::discover_models;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The CelebA face box the committed face model was trained on.
pub const CROP: [u32; 4] = [10, 25, 80, 95];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed face model's folder.
pub fn face_model() -> PathBuf {
    root().join("models/celeba-32")
}

/// Options for a studio over the committed face model, fitting faces with the CelebA crop.
pub fn options() -> Options {
    Options {
        models: discover_models(&face_model()).expect("models/celeba-32"),
        device: "cpu".into(),
        threads: 0,
        precision: glowd::precision::Precision::Fp32,
        listen: "127.0.0.1:0".into(),
        token: None,
        images: ImageSettings { crop: Some(CROP), resize: true, ..ImageSettings::default() },
        max_strength: glowd::job::DEFAULT_MAX_STRENGTH,
        gate: GateSettings { max_bits_per_dim: Some(4.5), ..GateSettings::default() },
        roots: vec![],
        pipeline: None,
        allow_submit: false,
    }
}

/// A studio and the runtime it runs on.
pub struct Running {
    pub rt: tokio::runtime::Runtime,
    pub studio: Option<Studio>,
    pub addr: SocketAddr,
}

impl Running {
    pub fn start(opts: Options) -> Result<Running, String> {
        let rt = glowd::pipeline::runtime().unwrap();
        let studio = rt.block_on(glowd::studio::start(opts))?;
        let addr = studio.addr;
        Ok(Running { rt, studio: Some(studio), addr })
    }

    pub fn get(&self, path: &str) -> Response {
        client::get(self.addr, path, &[]).unwrap()
    }

    /// A POST from the page itself (its Origin).
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Response {
        let origin = format!("http://{}", self.addr);
        client::request(self.addr, "POST", path, &[("Origin", &origin), ("Content-Type", content_type)], body).unwrap()
    }

    /// Uploads a face; returns its id.
    pub fn upload(&self, bytes: &[u8]) -> String {
        let r = self.post("/api/faces?model=0", "application/octet-stream", bytes);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["face"].as_str().unwrap().to_string()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.studio.take() {
            self.rt.block_on(s.stop());
        }
    }
}

/// The shared data's CelebA folder, if present (`GLOWD_SHARED_DATA`, else `../shared/data`).
pub fn shared_celeba() -> Option<PathBuf> {
    let data = std::env::var("GLOWD_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|_| root().join("../shared/data"));
    let celeba = data.join("celeba/img");
    celeba.is_dir().then_some(celeba)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A face the model never saw: the first CelebA image after the 4,000 the directions were learnt from that
/// training also held out (glowd's validation rule: the name's hash, 5%), written as PNG into `dir` (so `glowd edit`
/// writes PNG, bit-exact, rather than JPEG). Without the shared data: a sample of the model at T = 0.7, still a
/// face the model never encoded.
pub fn held_out_face(dir: &Path) -> PathBuf {
    held_out_faces(dir, 1).remove(0)
}

/// `n` such faces, `held-out-face.png`, `held-out-face-1.png`, …
pub fn held_out_faces(dir: &Path, n: usize) -> Vec<PathBuf> {
    let out = |i: usize| if i == 0 { dir.join("held-out-face.png") } else { dir.join(format!("held-out-face-{i}.png")) };
    if let Some(celeba) = shared_celeba() {
        let mut names: Vec<String> = std::fs::read_dir(&celeba)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".jpg"))
            .collect();
        names.sort();
        let held: Vec<&String> =
            names.iter().skip(4000).filter(|n| (fnv1a(n.as_bytes()) % 10_000) as f64 / 10_000.0 < 0.05).take(n).collect();
        assert_eq!(held.len(), n, "held-out CelebA faces");
        eprintln!("held-out faces: {} (CelebA, validation split)", held.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        held.iter()
            .enumerate()
            .map(|(i, name)| {
                image::open(celeba.join(name)).unwrap().save_with_format(out(i), image::ImageFormat::Png).unwrap();
                out(i)
            })
            .collect()
    } else {
        assert!(std::env::var("CI").is_err(), "CI needs ../shared/data/celeba/img for the held-out faces");
        eprintln!("held-out faces: samples of the model (../shared/data/celeba is not here)");
        (0..n)
            .map(|i| {
                let st = super::bin::glowd()
                    .args(["sample", "--model"])
                    .arg(face_model())
                    .args(["-n", "1", "--temperature", "0.7", "--seed", &(7 + i).to_string(), "--out"])
                    .arg(out(i))
                    .status()
                    .unwrap();
                assert!(st.success());
                // A sample is 32x32: scale it up so the studio's crop box fits it like a CelebA picture.
                let img = image::open(out(i)).unwrap().resize_exact(89, 109, image::imageops::FilterType::Nearest);
                img.save_with_format(out(i), image::ImageFormat::Png).unwrap();
                out(i)
            })
            .collect()
    }
}

/// `glowd edit`'s output for `face` with `--attr` pairs, fitted with the studio's crop.
pub fn glowd_edit(face: &Path, attrs: &[(&str, &str)], out: &Path) -> Vec<u8> {
    let mut cmd = super::bin::glowd();
    cmd.args(["edit", "--model"]).arg(face_model()).args(["--crop", "10,25,80,95"]);
    for (a, s) in attrs {
        cmd.arg("--attr").arg(format!("{a}={s}"));
    }
    let st = cmd.arg(face).arg("--out").arg(out).status().unwrap();
    assert!(st.success(), "glowd edit failed");
    std::fs::read(out.join(face.file_name().unwrap())).unwrap()
}
