//! `glowd studio`'s API: an edit is `glowd edit`'s output bit for bit; uploads are cached by content and bounded;
//! bad requests are refused with their reason; the listing stays inside its folders; state changes need the page's
//! origin or the token; a non-loopback address needs a token.
mod common;
use common::studio::{glowd_edit, held_out_face, options, Running};
use glowd::studio::client;

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn an_edit_is_glowd_edit_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let face = held_out_face(dir.path());
    let s = Running::start(options()).unwrap();
    let id = s.upload(&std::fs::read(&face).unwrap());
    for (i, attrs) in [vec![("Smiling", "0.8")], vec![("Smiling", "-1.25"), ("Eyeglasses", "0.5")], vec![("Male", "0")]].iter().enumerate() {
        let spec: Vec<String> = attrs.iter().map(|(a, v)| format!("{a}:{v}")).collect();
        let r = s.get(&format!("/api/edit?model=0&face={id}&edits={}", client::encode(&spec.join(","))));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("image/png"));
        let reference = glowd_edit(&face, attrs, &dir.path().join(format!("edit-{i}")));
        assert!(r.body == reference, "{attrs:?}: the studio's PNG differs from glowd edit's");
    }
    // Strength 0 everywhere is the reconstruction: the fitted face itself, pixel for pixel.
    let original = s.get(&format!("/api/faces/{id}/original?model=0"));
    let zero = s.get(&format!("/api/edit?model=0&face={id}&edits="));
    assert_eq!(original.status, 200);
    assert!(original.body == zero.body, "decode(encode(x)) != x");
    // Interpolating to another face: t = 0 is this face.
    let other = s.upload(&png_bytes(&image::open(&face).unwrap().fliph()));
    let t0 = s.get(&format!("/api/interpolate?model=0&a={id}&b={other}&t=0"));
    assert!(t0.status == 200 && t0.body == zero.body);
    let mid = s.get(&format!("/api/interpolate?model=0&a={id}&b={other}&t=0.5"));
    assert!(mid.status == 200 && mid.body != zero.body);
}

#[test]
fn uploads_are_cached_by_content_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let face = std::fs::read(held_out_face(dir.path())).unwrap();
    let mut opts = options();
    opts.images.max_input_bytes = face.len() as u64 + 10;
    let s = Running::start(opts).unwrap();
    let a = s.post("/api/faces?model=0", "image/png", &face);
    let b = s.post("/api/faces?model=0", "image/png", &face);
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["face"], b.json()["face"]);
    let bpd = a.json()["bits_per_dim"].as_f64().unwrap();
    assert!(bpd > 1.0 && bpd < 8.0, "{bpd}");
    assert_eq!(a.json()["gate"]["max_bits_per_dim"], 4.5);
    let big = vec![0u8; face.len() + 11];
    assert_eq!(s.post("/api/faces?model=0", "image/png", &big).status, 413);
    let r = s.post("/api/faces?model=0", "image/png", b"not a picture");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("unsupported_format"), "{}", r.text());
    let mut gif = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(40, 40)).write_to(&mut gif, image::ImageFormat::Gif).unwrap();
    let r = s.post("/api/faces?model=0", "image/gif", gif.get_ref());
    assert!(r.status == 422 && r.text().contains("gif images are not accepted"), "{}", r.text());
    assert_eq!(s.post("/api/faces?model=7", "image/png", &face).status, 400);
}

#[test]
fn bad_edits_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let face = std::fs::read(held_out_face(dir.path())).unwrap();
    let mut opts = options();
    opts.max_strength = 1e6;
    let s = Running::start(opts).unwrap();
    let id = s.upload(&face);
    let edit = |spec: &str| s.get(&format!("/api/edit?model=0&face={id}&edits={}", client::encode(spec)));
    let r = edit("Smile:1");
    assert!(r.status == 400 && r.json()["kind"] == "unknown_attribute", "{}", r.text());
    assert!(r.text().contains("Smiling"), "the refusal lists the model's attributes: {}", r.text());
    assert_eq!(edit("Smiling:2e6").status, 400);
    assert_eq!(edit("Smiling:NaN").status, 400);
    assert_eq!(edit("Smiling:1,Smiling:2").status, 400);
    assert_eq!(edit("Smiling").status, 400);
    // Far outside the data the inverse overflows: a message, never a black picture.
    let r = edit("Eyeglasses:100000");
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "Eyeglasses +100000.00 is outside what this model can draw for this face");
    assert_eq!(s.get("/api/edit?model=0&face=00ff&edits=Smiling:1").status, 404);
    assert_eq!(s.get("/api/edit?model=0&face=../../etc&edits=").status, 400);
    let s2 = s.get("/api/sample?model=0&seed=3&t=0.7&n=4");
    assert_eq!(s2.status, 200);
    assert_eq!(s2.body, s.get("/api/sample?model=0&seed=3&t=0.7&n=4").body);
    assert_ne!(s2.body, s.get("/api/sample?model=0&seed=4&t=0.7&n=4").body);
    assert_eq!(s.get("/api/sample?model=0&seed=3&t=0.7,0.7&n=4").status, 400, "three levels, two temperatures");
    assert_eq!(s.get("/api/sample?model=0&seed=3&t=0.7&n=999").status, 400);
}

#[test]
fn state_changes_need_the_page_origin_and_a_localhost_name() {
    let dir = tempfile::tempdir().unwrap();
    let face = std::fs::read(held_out_face(dir.path())).unwrap();
    let s = Running::start(options()).unwrap();
    let post = |headers: &[(&str, &str)]| client::request(s.addr, "POST", "/api/faces?model=0", headers, &face).unwrap().status;
    assert_eq!(post(&[]), 403, "no Origin");
    assert_eq!(post(&[("Origin", "http://evil.example")]), 403);
    assert_eq!(post(&[("Origin", "null")]), 403);
    assert_eq!(post(&[("Sec-Fetch-Site", "cross-site")]), 403);
    assert_eq!(post(&[("Sec-Fetch-Site", "same-origin")]), 200);
    assert_eq!(post(&[("Origin", &format!("http://{}", s.addr))]), 200);
    // DNS rebinding: a page of evil.example whose name now points here reads nothing.
    let port = s.addr.port();
    let evil_host = format!("evil.example:{port}");
    let origin = format!("http://{evil_host}");
    assert_eq!(client::get(s.addr, "/api/info", &[("Host", &evil_host)]).unwrap().status, 403);
    assert_eq!(post(&[("Host", &evil_host), ("Origin", &origin)]), 403);
    assert_eq!(client::get(s.addr, "/api/info", &[("Host", &format!("localhost:{port}"))]).unwrap().status, 200);
    // The page is served with a policy that keeps it to its own origin.
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'self'"));
    assert!(page.text().contains("glowd") && s.get("/app.js").text().contains("api("));
}

#[test]
fn a_token_is_needed_when_given_and_off_the_loopback() {
    let mut opts = options();
    opts.listen = "0.0.0.0:0".into();
    let e = Running::start(opts.clone()).err().expect("a non-loopback address without a token is refused");
    assert!(e.contains("--token"), "{e}");
    opts.token = Some("s3cret-token".into());
    let s = Running::start(opts).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.addr.port()));
    let info = |auth: &[(&str, &str)]| client::get(addr, "/api/info", auth).unwrap();
    assert_eq!(info(&[]).status, 401);
    assert_eq!(info(&[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(info(&[("Authorization", "s3cret-token")]).status, 401);
    let ok = info(&[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["token_required"], true);
    assert!(!ok.text().contains("s3cret"), "the token never reaches the page");
    // Any Host, and no Origin, with the token (a cross-site page cannot send the header).
    let dir = tempfile::tempdir().unwrap();
    let face = std::fs::read(held_out_face(dir.path())).unwrap();
    let r = client::request(addr, "POST", "/api/faces?model=0", &[("Authorization", "Bearer s3cret-token"), ("Host", "studio.lan")], &face).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The page itself holds no secret and loads without the token (it reads it from #token=…).
    assert_eq!(client::get(addr, "/", &[]).unwrap().status, 200);
}

#[test]
fn the_listing_stays_inside_its_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("faces");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let face = held_out_face(dir.path());
    std::fs::copy(&face, root.join("a.png")).unwrap();
    std::fs::copy(&face, root.join("sub/b.png")).unwrap();
    std::fs::write(root.join("notes.txt"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
    std::os::unix::fs::symlink(&face, root.join("outside.png")).unwrap();
    let mut opts = options();
    opts.roots = vec![root.clone()];
    let s = Running::start(opts).unwrap();
    let l = s.get("/api/list?root=0&path=").json();
    assert_eq!(l["dirs"], serde_json::json!(["sub"]), "{l}");
    assert_eq!(l["files"], serde_json::json!(["a.png"]), "{l}");
    assert_eq!(s.get("/api/list?root=0&path=sub").json()["files"], serde_json::json!(["b.png"]));
    for bad in ["..", "../..", "sub/../..", "escape", "/etc"] {
        assert_eq!(s.get(&format!("/api/list?root=0&path={}", client::encode(bad))).status, 403, "{bad}");
    }
    assert_eq!(s.get("/api/list?root=1&path=").status, 400);
    let pick = |path: &str| s.post("/api/faces/pick", "application/json", serde_json::json!({"root": 0, "path": path}).to_string().as_bytes());
    assert_eq!(pick("sub/b.png").status, 200);
    for bad in ["../held-out-face.png", "outside.png", "escape/passwd", "/etc/passwd"] {
        assert_eq!(pick(bad).status, 403, "{bad}");
    }
    // Without the page's origin, even a pick is refused.
    let r = client::request(s.addr, "POST", "/api/faces/pick", &[("Content-Type", "application/json")], br#"{"root":0,"path":"a.png"}"#).unwrap();
    assert_eq!(r.status, 403);
    // JSON bodies are small.
    let big = format!(r#"{{"root":0,"path":"{}"}}"#, "a".repeat(100_000));
    assert_eq!(s.post("/api/faces/pick", "application/json", big.as_bytes()).status, 413);
}

#[test]
fn export_writes_the_template_and_the_command() {
    let s = Running::start(options()).unwrap();
    let e = s.get(&format!("/api/export?model=0&edits={}", client::encode("Smiling:0.8,Eyeglasses:-0.35"))).json();
    assert_eq!(e["problems"], serde_json::json!([]), "{e}");
    let toml_text = e["toml"].as_str().unwrap();
    let parsed: toml::Table = toml::from_str(toml_text).unwrap();
    let job = &parsed["submit"]["job"];
    assert_eq!(job["kind"].as_str(), Some("edit"));
    assert_eq!(job["model"]["name"].as_str(), Some("celeba-32"));
    assert_eq!(job["edits"][0]["attribute"].as_str(), Some("Smiling"));
    assert_eq!(job["edits"][0]["strength"].as_float(), Some(0.8));
    assert_eq!(job["edits"][1]["strength"].as_float(), Some(-0.35));
    let command = e["command"].as_str().unwrap();
    assert!(command.starts_with("glowd submit --pipeline ") && command.ends_with("--attr Smiling=+0.8 --attr Eyeglasses=-0.35"), "{command}");
    let none = s.get("/api/export?model=0&edits=").json();
    assert!(none["problems"][0].as_str().unwrap().contains("move a slider"), "{none}");
    // Submitting needs --pipeline and --allow-submit.
    let r = s.post("/api/submit", "application/json", br#"{"edits":"Smiling:0.8"}"#);
    assert_eq!(r.status, 403, "{}", r.text());
}
