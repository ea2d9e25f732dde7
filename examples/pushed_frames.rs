//! The application makes its own audio: it pushes 20 ms frames of a rising chirp and reads the
//! decoded mix back frame by frame.
//!
//! `cargo run --features core --example pushed_frames [ws://HOST:PORT/ws]`

mod common;

use std::time::Duration;

use callme::audio::{FRAME_SAMPLES, SAMPLE_RATE};
use callme::{AudioSource, ClusterId, Session};

#[tokio::main]
async fn main() -> Result<(), callme::Error> {
    let target = common::Target::from_args().await?;
    let (source, frames) = AudioSource::pushed(8);
    let call = Session::connect(&target.url).await?.load(ClusterId(1), common::SCHEME, "chirp").await?.join(source).await?;

    // A chirp from 300 Hz to 1200 Hz over two seconds, one frame every 20 ms.
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut phase = 0.0f64;
        for n in 0..100 {
            tick.tick().await;
            let hz = 300.0 + 900.0 * n as f64 / 100.0;
            let frame: Vec<i16> = (0..FRAME_SAMPLES)
                .map(|_| {
                    phase = (phase + hz / f64::from(SAMPLE_RATE)).fract();
                    ((phase * std::f64::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            if frames.send(frame).await.is_err() {
                return; // the call ended
            }
        }
    });

    // Read the mix back: 50 frames, one second.
    let mut loud = 0;
    for _ in 0..50 {
        let Some(frame) = call.next_frame().await else { break };
        if callme::audio::mean_power(&frame) > 1e-4 {
            loud += 1;
        }
    }
    println!("read 50 frames of the mix, {loud} of them with sound");
    let _ = feeder.await;
    call.leave().await;
    target.stop().await;
    Ok(())
}
