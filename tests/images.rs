//! Image payloads (`payload = "image"`, and `{"id", "image": base64}` on
//! a JSON model with `[models.image]`): decode, fit (stretch, crop,
//! letterbox), normalize, quantize, invoke. References from Pillow's
//! decode and BILINEAR resize and the Python interpreter
//! (tests/fixtures/preprocess/images.json, made by
//! tests/fixtures/make_preprocess.py): PNGs fitted by a copy or an exact
//! upscale must match exactly; a general resize and JPEGs within the
//! tolerance recorded with each case (resamplers and decoders round
//! differently). Malformed, oversized and unsupported images are
//! answered with `bad_image` and the daemon keeps serving.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

fn images() -> Value {
    fixture("preprocess/images.json")
}

fn file(name: &str) -> Vec<u8> {
    let path: PathBuf = repo().join("tests/fixtures/preprocess").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Five MobileNet models: one per resize mode on image payloads, one on
/// JSON with `[models.image]`, one with a 1,000-pixel limit.
fn models(fx: &Value) -> String {
    let image = format!("mean = {}\nstd = {}\n", fx["mean"], fx["std"]);
    let model = |name: &str, topic: &str, payload: &str, extra: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\npath = \"{{models}}/mobilenet_v2_int8.tflite\"\ninput_topic = \"cam/+/{topic}\"\noutput_topic = \"out/{{model}}/{{1}}\"\npayload = \"{payload}\"\n[models.image]\n{image}{extra}\n"
        )
    };
    [
        model("stretch", "frame", "image", ""),
        model("crop", "crop", "image", "resize = \"crop\"\n"),
        model(
            "letterbox",
            "letterbox",
            "image",
            "resize = \"letterbox\"\n",
        ),
        model("json", "json", "json", ""),
        model("tiny", "tiny", "image", "max_pixels = 1000\n"),
    ]
    .concat()
}

fn case<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no image case {name}"))
}

/// Largest difference between a result's output values and a case's.
fn max_abs_diff(r: &Value, case: &Value) -> f64 {
    let got = r["outputs"][0]["values"].as_array().expect("values");
    let want = case["outputs"][0]["values"].as_array().expect("values");
    assert_eq!(got.len(), want.len(), "{r}");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a.as_f64().expect("number") - b.as_f64().expect("number")).abs())
        .fold(0.0, f64::max)
}

fn check_image_result(r: &Value, case: &Value) {
    assert_eq!(
        r["image"],
        json!({"format": case["format"], "width": case["width"], "height": case["height"]}),
        "{}",
        case["name"]
    );
    let diff = max_abs_diff(r, case);
    if case["exact"] == true {
        assert_outputs(r, case, None);
    } else {
        let tol = case["max_abs_diff"].as_f64().expect("tolerance");
        println!(
            "{}: largest output difference from Pillow's reference {diff} (tolerance {tol})",
            case["name"]
        );
        assert!(
            diff <= tol,
            "{}: output differs from the reference by {diff}, tolerance {tol}",
            case["name"]
        );
    }
}

#[test]
fn images_match_their_references() {
    let fx = images();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models(&fx)));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");

    // (topic, case): the device level of the topic tells the results apart.
    let sends = [
        ("cam/a/frame", "png_exact_size"),
        ("cam/b/frame", "png_stretch"),
        ("cam/c/crop", "png_crop"),
        ("cam/d/letterbox", "png_letterbox"),
        ("cam/e/frame", "jpeg_stretch"),
        ("cam/f/frame", "jpeg_flat_stretch"),
        ("cam/h/frame", "png_stretch_320x240"),
    ];
    for (topic, name) in sends {
        c.publish(topic, file(case(&fx, name)["file"].as_str().expect("file")));
    }
    c.publish("cam/g/json", fx["json_message"].to_string());
    let mut got: Vec<Received> = c.recv_n(sends.len() + 1);
    for (topic, name) in sends {
        let model = topic.rsplit('/').next().expect("level");
        let model = if model == "frame" { "stretch" } else { model };
        let device = topic.split('/').nth(1).expect("level");
        let want_topic = format!("out/{model}/{device}");
        let i = got
            .iter()
            .position(|m| m.topic == want_topic)
            .unwrap_or_else(|| {
                panic!(
                    "no result on {want_topic} for {name}; got {:?}",
                    got.iter()
                        .map(|m| (
                            m.topic.clone(),
                            String::from_utf8_lossy(&m.payload).into_owned()
                        ))
                        .collect::<Vec<_>>()
                )
            });
        let r = got.remove(i).json();
        assert_eq!(r["model"], model, "{r}");
        assert_eq!(r["source_topic"], topic, "{r}");
        assert!(r.get("id").is_none(), "an image payload has no id: {r}");
        check_image_result(&r, case(&fx, name));
    }
    let m = got.pop().expect("the JSON result");
    assert_eq!(m.topic, "out/json/g");
    let r = m.json();
    assert_eq!(r["id"], fx["json_message"]["id"], "{r}");
    check_image_result(
        &r,
        case(&fx, fx["json_message_case"].as_str().expect("case")),
    );
}

/// Standard base64 with padding (RFC 4648), for the JSON form.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_encoder_matches_the_fixture() {
    let fx = images();
    assert_eq!(
        base64(&file("scene_224x224.png")),
        fx["json_message"]["image"].as_str().expect("image")
    );
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"a"), "YQ==");
}

fn expect_bad_image(c: &TestClient, what: &str, model: &str, topic: &str) -> Value {
    let m = c.recv();
    assert_eq!(
        m.topic,
        "edge-infer/dev1/errors",
        "{what}: expected bad_image, got {}: {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );
    let e = m.json();
    assert_eq!(e["code"], "bad_image", "{what}: {e}");
    assert_eq!(e["model"], model, "{what}: {e}");
    assert_eq!(e["source_topic"], topic, "{what}: {e}");
    println!("{what}: {}", e["message"]);
    e
}

#[test]
fn bad_images_are_refused_with_bad_image_and_the_daemon_keeps_serving() {
    let fx = images();
    let broker = Broker::start();
    let d = Daemon::start(&config(broker.port, "dev1", "", &models(&fx)));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let png = file("scene_224x224.png");
    let jpg = file("scene_320x240.jpg");
    // Everything before the scan (start of scan: FF DA): a header, no data.
    let sos = jpg
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("a start of scan");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("corrupt PNG data", file("bad/corrupt_idat.png")),
        ("truncated PNG", png[..png.len() / 2].to_vec()),
        ("truncated JPEG", jpg[..jpg.len() * 3 / 5].to_vec()),
        ("JPEG header only", jpg[..sos].to_vec()),
        (
            "PNG header claiming 60000x60000",
            file("bad/huge_header.png"),
        ),
        ("GIF", file("bad/small.gif")),
        ("BMP", file("bad/small.bmp")),
        ("plain text", b"hello, this is not an image\n".to_vec()),
    ];
    for (what, bytes) in &cases {
        c.publish("cam/x/frame", bytes.clone());
        expect_bad_image(&c, what, "stretch", "cam/x/frame");
    }
    // Over max_pixels (1,000): a real 224x224 PNG and the huge header.
    for (what, bytes) in [
        ("224x224 over max_pixels 1000", png.clone()),
        (
            "60000x60000 over max_pixels 1000",
            file("bad/huge_header.png"),
        ),
    ] {
        c.publish("cam/x/tiny", bytes);
        let e = expect_bad_image(&c, what, "tiny", "cam/x/tiny");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("max_pixels"),
            "{what}: the message names the limit: {e}"
        );
    }
    // The JSON form: a GIF, and text that is not base64.
    c.publish(
        "cam/x/json",
        json!({"id": "gif", "image": base64(&file("bad/small.gif"))}).to_string(),
    );
    let e = expect_bad_image(&c, "base64 GIF", "json", "cam/x/json");
    assert_eq!(e["id"], "gif", "{e}");
    c.publish(
        "cam/x/json",
        json!({"id": "not-base64", "image": "*** not base64 ***"}).to_string(),
    );
    let e = expect_bad_image(&c, "not base64", "json", "cam/x/json");
    assert_eq!(e["id"], "not-base64", "{e}");
    // A data: URL prefix is allowed (README.md).
    let data_url = format!(
        "data:image/png;base64,{}",
        fx["json_message"]["image"].as_str().expect("image")
    );
    c.publish(
        "cam/x/json",
        json!({"id": "data-url", "image": data_url}).to_string(),
    );
    let m = c.recv();
    assert_eq!(m.topic, "out/json/x");
    let r = m.json();
    assert_eq!(r["id"], "data-url", "{r}");
    check_image_result(&r, case(&fx, "png_exact_size"));

    // Still serving, exactly.
    c.publish("cam/x/frame", png);
    let m = c.recv();
    assert_eq!(m.topic, "out/stretch/x");
    check_image_result(&m.json(), case(&fx, "png_exact_size"));
    assert!(!d.has_exited());
}

/// The shapes model (a confident classifier on raw pixels, no
/// `[models.image]` table: stretch, mean 0, std 1) on the samples of
/// models/samples/: references in tests/fixtures/shapes_int8.json, JPEG
/// tolerances in images.json (`shapes_int8`). Unlike MobileNet's, these
/// tolerances are far below the gaps between classes.
#[test]
fn shapes_samples_match_their_references_and_labels() {
    let reference = fixture("shapes_int8.json");
    let tolerances = &images()["shapes_int8"];
    let labels: Vec<&str> = reference["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_str().expect("label"))
        .collect();
    let broker = Broker::start();
    let models = "[[models]]\nname = \"shapes\"\npath = \"{models}/shapes_int8.tflite\"\ninput_topic = \"cameras/+/frame\"\noutput_topic = \"shapes/{1}\"\npayload = \"image\"\nlabels = \"{models}/shapes.labels\"\n";
    let _d = Daemon::start(&config(broker.port, "dev1", "", models));
    let c = TestClient::connect(broker.port);
    c.subscribe("shapes/#");
    c.subscribe("edge-infer/dev1/errors");

    let cases: Vec<&Value> = reference["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c.get("image").is_some())
        .collect();
    assert_eq!(cases.len(), 6, "the shapes fixture's image cases");
    for (i, case) in cases.iter().enumerate() {
        let path = repo().join(case["image"]["file"].as_str().expect("file"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        c.publish(&format!("cameras/cam-{i}/frame"), bytes);
    }
    let mut got = c.recv_n(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().expect("name");
        let topic = format!("shapes/cam-{i}");
        let at = got
            .iter()
            .position(|m| m.topic == topic)
            .unwrap_or_else(|| panic!("no result on {topic} for {name}"));
        let r = got.remove(at).json();
        let tol = &tolerances[name];
        assert!(tol.is_object(), "no tolerance for {name} in images.json");
        let image = &case["image"];
        assert_eq!(
            r["image"],
            json!({"format": image["format"], "width": image["width"], "height": image["height"]}),
            "{name}: {r}"
        );
        let diff = max_abs_diff(&r, case);
        if tol["exact"] == true {
            assert_outputs(&r, case, None);
        } else {
            let max = tol["max_abs_diff"].as_f64().expect("max_abs_diff");
            println!("{name}: largest output difference from Pillow's reference {diff} (tolerance {max})");
            assert!(
                diff <= max,
                "{name}: differs by {diff}, tolerance {max}: {r}"
            );
        }
        // The class, wherever the tolerance cannot reorder the top two.
        let top1 = tol["top1"].as_u64().expect("top1") as usize;
        let margin = tol["top1_margin"].as_f64().unwrap_or(1.0);
        let max = tol["max_abs_diff"].as_f64().unwrap_or(0.0);
        if margin > 2.0 * max {
            assert_eq!(r["top_k"][0]["label"], labels[top1], "{name}: {r}");
        }
    }
}
