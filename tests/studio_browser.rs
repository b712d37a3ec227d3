//! `glowd studio` in a real browser: Debian's Chromium driven through chromedriver (WebDriver, the `fantoccini`
//! crate). The page uploads a held-out face, a slider moves by keyboard as a user moves it, and the picture the page
//! shows is fetched back and compared with `glowd edit`'s output byte for byte; then the other tabs. Against the
//! dev stack, the Export tab submits a run and the Runs tab follows it to the end, as `glowd status` counts it.
//!
//! Screenshots of each tab go to `$GLOWD_SCREENSHOTS` (the README's are taken with `GLOWD_SCREENSHOTS=docs`), else
//! to the target's temporary folder. Without chromedriver the tests say so and pass, except in CI (`CI=true`),
//! where they fail: `scripts/setup` installs `chromium` and `chromium-driver`.
mod common;
use common::studio::{self as studio_common, glowd_edit, held_out_face, options, Running};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The first of `candidates` that exists, or the first name found on PATH.
fn find(env: &str, names: &[&str], candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for dir in path.split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A chromedriver child process, killed on drop.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port, once it answers; `None` (with a line saying why) when Chromium is not installed,
/// which fails the test in CI.
fn chromedriver() -> Option<Driver> {
    let driver = find("GLOWD_CHROMEDRIVER", &["chromedriver"], &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    let chromium = find("GLOWD_CHROMIUM", &["chromium", "chromium-browser"], &["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        let why = "chromium and chromedriver are not installed (scripts/setup installs Debian's chromium and chromium-driver)";
        assert!(!in_ci(), "CI must run the browser tests: {why}");
        eprintln!("skipped: {why}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", driver.display()));
    let d = Driver { child, url: format!("http://127.0.0.1:{port}"), chromium };
    let t0 = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while glowd::studio::client::get(addr, "/status", &[]).map(|r| r.status != 200).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(30), "chromedriver did not answer on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(d)
}

/// A headless Chromium session, 1280x900 CSS pixels.
async fn browser(d: &Driver) -> Client {
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": d.chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--force-device-scale-factor=1", "--hide-scrollbars", "--lang=en-US"],
        }
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&d.url).await.expect("a Chromium session")
}

/// Waits until `script` (a JS expression) is truthy; fails after `limit` with `what`.
async fn until(c: &Client, script: &str, limit: Duration, what: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = c.execute(&format!("return ({script});"), vec![]).await.unwrap();
        if !(v.is_null() || v == json!(false) || v == json!("")) {
            return v;
        }
        if t0.elapsed() > limit {
            let banner = c.execute("return document.getElementById('banner').textContent", vec![]).await.unwrap();
            panic!("timed out waiting for {what} (page banner: {banner})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bytes of the picture an `<img>` shows (its blob), read back inside the page.
async fn shown_bytes(c: &Client, id: &str) -> Vec<u8> {
    let script = "const [id, done] = arguments; fetch(document.getElementById(id).src).then((r) => r.arrayBuffer())\
                  .then((b) => done(Array.from(new Uint8Array(b))), (e) => done(String(e)));";
    let v = c.execute_async(script, vec![json!(id)]).await.unwrap();
    v.as_array().unwrap_or_else(|| panic!("reading #{id}: {v}")).iter().map(|x| x.as_u64().unwrap() as u8).collect()
}

fn screenshots_dir() -> PathBuf {
    let dir = std::env::var("GLOWD_SCREENSHOTS")
        .map(|d| if Path::new(&d).is_absolute() { PathBuf::from(d) } else { studio_common::root().join(d) })
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("studio-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = screenshots_dir().join(format!("studio-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn tab(c: &Client, name: &str) {
    c.find(Locator::Css(&format!("#tabs [data-tab={name}]"))).await.unwrap().click().await.unwrap();
}

/// Moves a slider by keyboard, `steps` steps of 0.05 (negative: left), as a user would.
async fn slide(c: &Client, attr: &str, steps: i32) -> String {
    let slider = c.find(Locator::Css(&format!("#sliders input[data-attr={attr}]"))).await.unwrap();
    let key = if steps >= 0 { Key::Right } else { Key::Left };
    slider.send_keys(&key.repeat(steps.unsigned_abs() as usize)).await.unwrap();
    slider.prop("value").await.unwrap().unwrap()
}

/// The page's edit string once the edited picture for it is shown.
async fn edited(c: &Client) -> String {
    let want = c.execute("return (() => { const s = [...document.querySelectorAll('#sliders input')].filter((i) => Number(i.value) !== 0).map((i) => `${i.dataset.attr}:${i.value}`).join(','); return s; })()", vec![]).await.unwrap();
    let want = want.as_str().unwrap().to_string();
    let check = format!("document.getElementById('edited').dataset.state === 'ready' && document.getElementById('edited').dataset.edits === {}", json!(want));
    until(c, &check, Duration::from_secs(30), &format!("the edited picture for {want}")).await;
    want
}

#[test]
fn the_page_edits_a_held_out_face_as_glowd_edit_does() {
    let Some(driver) = chromedriver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    std::fs::create_dir_all(&faces).unwrap();
    let face = held_out_face(&faces);
    let other = faces.join("mirrored.png");
    image::open(&face).unwrap().fliph().save(&other).unwrap();
    let mut opts = options();
    opts.roots = vec![faces.clone()];
    let s = Running::start(opts).unwrap();
    let url = format!("http://{}/", s.addr);
    s.rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&url).await.unwrap();
        until(&c, "document.body.dataset.ready === 'true'", Duration::from_secs(30), "the page to start").await;
        // Upload through the file input, as a user picks a file.
        c.find(Locator::Id("file")).await.unwrap().send_keys(face.to_str().unwrap()).await.unwrap();
        until(&c, "document.getElementById('original').dataset.face", Duration::from_secs(30), "the uploaded face").await;
        let bpd = until(&c, "document.getElementById('bpd').textContent", Duration::from_secs(5), "bits/dim").await;
        assert!(bpd.as_str().unwrap().contains("bits/dim") && bpd.as_str().unwrap().contains("gate 4.5"), "{bpd}");

        // The Smiling slider, 16 steps right: +0.80.
        let value = slide(&c, "Smiling", 16).await;
        assert_eq!(value, "0.8");
        let spec = edited(&c).await;
        assert_eq!(spec, "Smiling:0.8");
        let shown = shown_bytes(&c, "edited").await;
        let reference = glowd_edit(&face, &[("Smiling", &value)], &dir.path().join("edit-smiling"));
        assert!(shown == reference, "the page's picture is not glowd edit's output (Smiling={value})");

        // Too far for this face: a message in place of the picture, never a black one.
        let slider = c.find(Locator::Css("#sliders input[data-attr=Eyeglasses]")).await.unwrap();
        slider.send_keys(&Key::End).await.unwrap();
        until(&c, "document.getElementById('edited').dataset.state === 'refused'", Duration::from_secs(30), "the refusal").await;
        let refusal = c.find(Locator::Id("edit-error")).await.unwrap().text().await.unwrap();
        assert_eq!(refusal, "Eyeglasses +4.00, Smiling +0.80 is outside what this model can draw for this face");
        assert!(c.find(Locator::Id("edit-error")).await.unwrap().is_displayed().await.unwrap());
        assert!(!c.find(Locator::Id("edited")).await.unwrap().is_displayed().await.unwrap(), "no picture beside the refusal");

        // Several sliders at once (Eyeglasses back from +4.00 to -0.35).
        slide(&c, "Eyeglasses", -87).await;
        slide(&c, "Young", 10).await;
        let spec = edited(&c).await;
        let pairs: Vec<(String, String)> = spec.split(',').map(|p| p.split_once(':').map(|(a, v)| (a.to_string(), v.to_string())).unwrap()).collect();
        assert_eq!(pairs.len(), 3, "{spec}");
        let attrs: Vec<(&str, &str)> = pairs.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect();
        let reference = glowd_edit(&face, &attrs, &dir.path().join("edit-three"));
        assert!(shown_bytes(&c, "edited").await == reference, "the page's picture is not glowd edit's output ({spec})");
        // The listing opens the other face from the folder.
        until(&c, "document.querySelector('#browse-list li[data-path=\"mirrored.png\"]')", Duration::from_secs(10), "the folder listing").await;
        screenshot(&c, "edit").await;

        tab(&c, "interpolate").await;
        until(&c, "!document.getElementById('interp-a').hidden", Duration::from_secs(30), "face A from the Edit tab").await;
        c.find(Locator::Id("interp-file-b")).await.unwrap().send_keys(other.to_str().unwrap()).await.unwrap();
        until(&c, "document.getElementById('interp-frame').dataset.url", Duration::from_secs(30), "an interpolated frame").await;
        screenshot(&c, "interpolate").await;

        tab(&c, "sample").await;
        until(&c, "document.getElementById('sample-grid').dataset.url", Duration::from_secs(60), "samples").await;
        screenshot(&c, "sample").await;

        tab(&c, "export").await;
        let toml_text = until(&c, "document.getElementById('export-toml').textContent", Duration::from_secs(10), "the template").await;
        let parsed: toml::Table = toml::from_str(toml_text.as_str().unwrap()).unwrap();
        let edits = parsed["submit"]["job"]["edits"].as_array().unwrap();
        assert!(edits.iter().any(|e| e["attribute"].as_str() == Some("Smiling") && e["strength"].as_float() == Some(0.8)), "{toml_text}");
        let command = c.find(Locator::Id("export-command")).await.unwrap().text().await.unwrap();
        assert!(command.contains("--attr Smiling=+0.8"), "{command}");

        // Back on Edit: the folder's other face, picked from the listing.
        tab(&c, "edit").await;
        let before = c.execute("return document.getElementById('original').dataset.face", vec![]).await.unwrap();
        c.find(Locator::Css("#browse-list li[data-path=\"mirrored.png\"]")).await.unwrap().click().await.unwrap();
        until(&c, &format!("document.getElementById('original').dataset.face !== {before}"), Duration::from_secs(30), "the picked face").await;
        c.close().await.unwrap();
    });
}

/// The Export tab submits a run over an S3 prefix of the dev stack (five held-out faces and one file that is not a
/// picture) to a running `glowd serve`; the Runs tab follows it until every job has reported, with the counts
/// `glowd status` prints, the dead letter under its reason, and thumbnails of finished outputs.
#[test]
fn the_runs_tab_follows_a_run_submitted_from_the_page() {
    use common::daemon::{free_port, pipeline_toml};
    use common::e2e;
    let Some(driver) = chromedriver() else { return };
    let _serial = common::daemon::serial();
    let stack = e2e::stack();
    let n = e2e::names("studio-runs");
    let dir = tempfile::tempdir().unwrap();
    let faces = studio_common::held_out_faces(dir.path(), 5);
    let rt = common::daemon::runtime();
    rt.block_on(async {
        e2e::create_topics(&n).await;
        let s3 = e2e::s3().await;
        for (i, f) in faces.iter().enumerate() {
            e2e::put(&s3, &format!("{}/face-{i}.png", n.inputs), std::fs::read(f).unwrap()).await;
        }
        e2e::put(&s3, &format!("{}/not-a-picture.png", n.inputs), b"not a picture".to_vec()).await;
    });
    let port = free_port();
    let cfg = pipeline_toml(dir.path(), &n, &studio_common::face_model(), port, stack, &e2e::brokers(), &[]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[images]\ncrop = [10, 25, 80, 95]\n\n[gate]\nmax_bits_per_dim = 4.5\n\n[submit]\n\
         job = { kind = \"edit\", model = { name = \"faces\", version = \"1\" }, edits = [{ attribute = \"Smiling\", strength = 0.8 }] }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = e2e::start_daemon(&cfg, &dir.path().join("daemon.log"), port);
    // The studio reads the same S3 the daemon does, with the dev stack's credentials.
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        std::env::set_var(k, &stack[k]);
    }
    let file = glowd::settings::PipelineFile::load(&cfg).unwrap();
    let mut opts = options();
    opts.models = file.models.clone();
    opts.images = file.pipeline.images.clone();
    opts.gate = file.pipeline.gate.clone();
    opts.pipeline = Some((cfg.clone(), file));
    opts.allow_submit = true;
    let s = Running::start(opts).unwrap();
    let url = format!("http://{}/", s.addr);
    let run = s.rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&url).await.unwrap();
        until(&c, "document.body.dataset.ready === 'true'", Duration::from_secs(30), "the page to start").await;
        c.find(Locator::Id("file")).await.unwrap().send_keys(faces[0].to_str().unwrap()).await.unwrap();
        until(&c, "document.getElementById('original').dataset.face", Duration::from_secs(30), "the uploaded face").await;
        assert_eq!(slide(&c, "Smiling", 16).await, "0.8");
        edited(&c).await;
        tab(&c, "export").await;
        until(&c, "!document.getElementById('submit-panel').hidden && document.getElementById('export-command').textContent", Duration::from_secs(10), "the submit panel").await;
        let prefix = c.find(Locator::Id("submit-prefix")).await.unwrap().prop("value").await.unwrap().unwrap();
        assert_eq!(prefix, format!("s3://{}/{}/", stack["S3_BUCKET"], n.inputs));
        c.find(Locator::Id("submit-run")).await.unwrap().click().await.unwrap();
        let run = until(&c, "document.getElementById('submitted-run')?.textContent", Duration::from_secs(60), "the run id").await;
        let run = run.as_str().unwrap().to_string();
        screenshot(&c, "export").await;

        tab(&c, "runs").await;
        let card = format!("document.querySelector('.run[data-run=\"{run}\"]')");
        let count = |what: &str| format!("{card}?.querySelector('[data-count=\"{what}\"] b')?.textContent");
        let settled = format!("{} === '6' && {} === '0' && {card}.querySelectorAll('.thumbs img').length > 0 && [...{card}.querySelectorAll('.thumbs img')].every((i) => i.complete && i.naturalWidth > 0)", count("images"), count("pending"));
        until(&c, &settled, Duration::from_secs(240), "the run to finish on the Runs tab").await;
        let mut page = serde_json::Map::new();
        for (what, key) in [("done", "done"), ("dead-lettered", "dead_lettered"), ("skipped", "skipped"), ("pending", "pending"), ("images", "images")] {
            page.insert(key.into(), c.execute(&format!("return Number({})", count(what)), vec![]).await.unwrap());
        }
        let kinds = c.execute(&format!("return [...{card}.querySelectorAll('table.dead tr[data-kind]')].map((r) => r.dataset.kind + ' ' + r.children[1].textContent)"), vec![]).await.unwrap();
        assert_eq!(kinds, json!(["unsupported_format 1"]), "the dead letter under its reason");
        screenshot(&c, "runs").await;
        c.close().await.unwrap();
        (run, Value::Object(page))
    });
    // The same counts as `glowd status`.
    let out = common::bin::glowd()
        .args(["status", "--pipeline"])
        .arg(&cfg)
        .args(["--run", &run.0])
        .env("AWS_ACCESS_KEY_ID", &stack["AWS_ACCESS_KEY_ID"])
        .env("AWS_SECRET_ACCESS_KEY", &stack["AWS_SECRET_ACCESS_KEY"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "glowd status: {}", String::from_utf8_lossy(&out.stderr));
    let mut status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status.as_object_mut().unwrap().remove("run");
    assert_eq!(status, run.1, "the Runs tab and glowd status disagree");
    assert_eq!(run.1["done"], 5);
    assert_eq!(run.1["dead_lettered"], 1);
    daemon.stop();
}
