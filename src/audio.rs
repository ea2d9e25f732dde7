//! Audio: the sources a party sends (steps 1–2), the frames it hears (step 19), WAV files, and
//! the tone analysis that tells what was heard.
//!
//! Everything is 48 kHz mono 16-bit PCM in frames of 20 ms (960 samples), Opus's usual frame.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// Samples per second.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;
/// The frame period.
pub const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);

/// One 20 ms frame of 48 kHz mono PCM.
pub type Frame = Vec<i16>;

/// What a party sends: the seed's "local microphone stream".
#[derive(Debug)]
#[non_exhaustive]
pub enum AudioSource {
    /// A sine tone at `hz`, at `level` of full scale (0.0–1.0).
    Tone {
        /// Frequency in Hz.
        hz: f32,
        /// Amplitude as a share of full scale.
        level: f32,
    },
    /// A WAV file (16-bit PCM, any rate, mono or stereo), looped.
    Wav(PathBuf),
    /// Digital silence.
    Silence,
    /// Frames the application pushes through a [`FrameSender`]; silence while none are queued.
    Pushed(mpsc::Receiver<Frame>),
}

/// The application's end of [`AudioSource::Pushed`].
pub type FrameSender = mpsc::Sender<Frame>;

impl AudioSource {
    /// A tone at a conversational level (-12 dBFS).
    pub fn tone(hz: f32) -> Self {
        AudioSource::Tone { hz, level: 0.25 }
    }

    /// A source fed by the application, and the sender to feed it (up to `depth` frames queued).
    pub fn pushed(depth: usize) -> (Self, FrameSender) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (AudioSource::Pushed(rx), tx)
    }

    /// One line for the transcript.
    pub fn describe(&self) -> String {
        match self {
            AudioSource::Tone { hz, level } => format!("tone {hz} Hz at {level}"),
            AudioSource::Wav(p) => format!("wav {}", p.display()),
            AudioSource::Silence => "silence".into(),
            AudioSource::Pushed(_) => "frames pushed by the application".into(),
        }
    }

    /// Opens the source (reads a WAV file whole), like getUserMedia: fails before anything is sent.
    pub fn open(self) -> Result<LocalAudio, String> {
        let kind = match self {
            AudioSource::Tone { hz, level } => {
                if !(hz > 0.0 && hz < SAMPLE_RATE as f32 / 2.0) {
                    return Err(format!("tone frequency {hz} Hz is outside 0–24000 Hz"));
                }
                if !(0.0..=1.0).contains(&level) {
                    return Err(format!("tone level {level} is outside 0.0–1.0"));
                }
                Kind::Tone { step: hz / SAMPLE_RATE as f32, phase: 0.0, amp: level * i16::MAX as f32 }
            }
            AudioSource::Wav(path) => {
                let samples = read_wav(&path)?;
                if samples.is_empty() {
                    return Err(format!("{}: no samples", path.display()));
                }
                Kind::Looped { samples, pos: 0 }
            }
            AudioSource::Silence => Kind::Silence,
            AudioSource::Pushed(rx) => Kind::Pushed(rx),
        };
        Ok(LocalAudio { kind })
    }
}

/// An opened source that yields one frame per call.
#[derive(Debug)]
pub struct LocalAudio {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Tone { step: f32, phase: f32, amp: f32 },
    Looped { samples: Vec<i16>, pos: usize },
    Silence,
    Pushed(mpsc::Receiver<Frame>),
}

impl LocalAudio {
    /// The next 20 ms of audio.
    pub fn next_frame(&mut self) -> Frame {
        match &mut self.kind {
            Kind::Tone { step, phase, amp } => (0..FRAME_SAMPLES)
                .map(|_| {
                    let s = (*phase * std::f32::consts::TAU).sin() * *amp;
                    *phase = (*phase + *step).fract();
                    s as i16
                })
                .collect(),
            Kind::Looped { samples, pos } => (0..FRAME_SAMPLES)
                .map(|_| {
                    let s = samples[*pos];
                    *pos = (*pos + 1) % samples.len();
                    s
                })
                .collect(),
            Kind::Silence => vec![0; FRAME_SAMPLES],
            Kind::Pushed(rx) => match rx.try_recv() {
                Ok(mut f) => {
                    f.resize(FRAME_SAMPLES, 0);
                    f
                }
                Err(_) => vec![0; FRAME_SAMPLES],
            },
        }
    }
}

/// Reads a 16-bit PCM WAV file as 48 kHz mono (channels averaged, other rates resampled linearly).
pub fn read_wav(path: &Path) -> Result<Vec<i16>, String> {
    let mut reader = hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(format!(
            "{}: only 16-bit integer PCM is read, this is {:?} {}-bit",
            path.display(),
            spec.sample_format,
            spec.bits_per_sample
        ));
    }
    let raw: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", path.display()))?;
    let ch = usize::from(spec.channels.max(1));
    let mono: Vec<i16> = raw.chunks(ch).map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / c.len() as i32) as i16).collect();
    Ok(resample_linear(&mono, spec.sample_rate, SAMPLE_RATE))
}

fn resample_linear(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..out_len)
        .map(|i| {
            let x = i as f64 * f64::from(from) / f64::from(to);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(input.len() - 1);
            let t = x - i0 as f64;
            (f64::from(input[i0.min(input.len() - 1)]) * (1.0 - t) + f64::from(input[i1]) * t) as i16
        })
        .collect()
}

/// Writes 48 kHz mono PCM to a WAV file.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<(), String> {
    let spec = hound::WavSpec { channels: 1, sample_rate: SAMPLE_RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| format!("{}: {e}", path.display()))?;
    for &s in samples {
        w.write_sample(s).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.finalize().map_err(|e| format!("{}: {e}", path.display()))
}

/// Power of `samples` at `hz` (Goertzel), normalised so a full-scale sine gives about 0.25.
pub fn tone_power(samples: &[i16], hz: f32) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = std::f64::consts::TAU * f64::from(hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    power / (n * n)
}

/// Mean power of `samples` (a full-scale sine gives 0.5).
pub fn mean_power(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|&s| (f64::from(s) / 32768.0).powi(2)).sum::<f64>() / samples.len() as f64
}

/// The share of `samples`' power that lies at `hz` (about 1.0 for a pure tone at `hz`, near 0
/// when `hz` is absent).
pub fn tone_share(samples: &[i16], hz: f32) -> f64 {
    let total = mean_power(samples);
    if total < 1e-9 {
        return 0.0;
    }
    // A sine of amplitude A has mean power A²/2 and Goertzel power A²/4.
    (2.0 * tone_power(samples, hz) / total).min(1.0)
}

/// The dominant frequencies of `samples` between 50 and 4000 Hz, strongest first: each a local
/// peak on a 10 Hz grid holding at least 5% of the signal's power. Empty for silence.
pub fn dominant_frequencies(samples: &[i16], max: usize) -> Vec<(f32, f64)> {
    // Half a second is plenty for 10 Hz resolution at these levels; take the middle of the clip.
    let window = samples.len().min(SAMPLE_RATE as usize / 2);
    let start = (samples.len() - window) / 2;
    let s = &samples[start..start + window];
    if mean_power(s) < 1e-7 {
        return Vec::new();
    }
    let grid: Vec<(f32, f64)> = (5..=400).map(|k| (k as f32 * 10.0, tone_share(s, k as f32 * 10.0))).collect();
    let mut peaks: Vec<(f32, f64)> = grid
        .iter()
        .enumerate()
        .filter(|&(i, &(_, p))| p >= 0.05 && (i == 0 || grid[i - 1].1 <= p) && (i + 1 == grid.len() || grid[i + 1].1 < p))
        .map(|(_, &fp)| fp)
        .collect();
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1));
    peaks.truncate(max);
    peaks
}

/// Opus at 48 kHz mono, 20 ms frames.
pub mod opus_codec {
    use super::{Frame, FRAME_SAMPLES, SAMPLE_RATE};

    /// An Opus encoder for one outgoing stream.
    pub struct Encoder {
        inner: opus::Encoder,
        /// The packet loss it was last told to expect, in percent.
        expected_loss: u8,
    }

    impl Encoder {
        /// An encoder at 32 kbit/s with in-band FEC, expecting no loss (so sending no FEC until
        /// [`Encoder::set_expected_loss`] says otherwise).
        pub fn new() -> Result<Self, String> {
            let mut e = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).map_err(|e| e.to_string())?;
            e.set_bitrate(opus::Bitrate::Bits(32_000)).map_err(|e| e.to_string())?;
            e.set_inband_fec(true).map_err(|e| e.to_string())?;
            Ok(Encoder { inner: e, expected_loss: 0 })
        }

        /// In-band FEC on or off (on from [`Encoder::new`]).
        pub fn set_inband_fec(&mut self, on: bool) -> Result<(), String> {
            self.inner.set_inband_fec(on).map_err(|e| e.to_string())
        }

        /// The packet loss the encoder expects, in percent (above 100 counts as 100): with FEC on,
        /// how much redundancy it adds for the previous frame. Setting the value it already has
        /// does nothing, so it may be called at every frame.
        pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), String> {
            let percent = percent.min(100);
            if percent == self.expected_loss {
                return Ok(());
            }
            self.inner.set_packet_loss_perc(i32::from(percent)).map_err(|e| e.to_string())?;
            self.expected_loss = percent;
            Ok(())
        }

        /// The packet loss the encoder expects now, in percent.
        pub fn expected_loss(&self) -> u8 {
            self.expected_loss
        }

        /// Encodes one 20 ms frame.
        pub fn encode(&mut self, frame: &[i16]) -> Result<Vec<u8>, String> {
            self.inner.encode_vec(frame, 1500).map_err(|e| e.to_string())
        }
    }

    /// An Opus decoder for one incoming stream (decodes stereo streams to mono too).
    pub struct Decoder {
        inner: opus::Decoder,
        /// Room for the longest Opus frame (120 ms), reused for every packet.
        scratch: Vec<i16>,
    }

    impl Decoder {
        /// A mono decoder at 48 kHz.
        pub fn new() -> Result<Self, String> {
            let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(|e| e.to_string())?;
            Ok(Decoder { inner, scratch: vec![0; FRAME_SAMPLES * 6] })
        }

        /// Decodes one packet into `out` (replacing its contents, keeping its allocation);
        /// `None` conceals a lost packet (PLC).
        pub fn decode_into(&mut self, packet: Option<&[u8]>, out: &mut Vec<i16>) -> Result<(), String> {
            let n = self.inner.decode(packet.unwrap_or(&[]), &mut self.scratch, false).map_err(|e| e.to_string())?;
            out.clear();
            out.extend_from_slice(&self.scratch[..n]);
            Ok(())
        }

        /// Conceals `samples` lost samples (Opus PLC) into `out` (a multiple of 2.5 ms).
        pub fn conceal_into(&mut self, samples: usize, out: &mut Vec<i16>) -> Result<(), String> {
            let samples = samples.min(self.scratch.len());
            let n = self.inner.decode(&[], &mut self.scratch[..samples], false).map_err(|e| e.to_string())?;
            out.clear();
            out.extend_from_slice(&self.scratch[..n]);
            Ok(())
        }

        /// Rebuilds the `samples` lost just before `next` from its in-band FEC into `out` (PLC
        /// when `next` carries none).
        pub fn decode_fec_into(&mut self, next: &[u8], samples: usize, out: &mut Vec<i16>) -> Result<(), String> {
            let samples = samples.min(self.scratch.len());
            let n = self.inner.decode(next, &mut self.scratch[..samples], true).map_err(|e| e.to_string())?;
            out.clear();
            out.extend_from_slice(&self.scratch[..n]);
            Ok(())
        }

        /// Decodes one packet into a new frame; `None` conceals a lost packet (PLC).
        pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Frame, String> {
            let mut out = Vec::with_capacity(FRAME_SAMPLES);
            self.decode_into(packet, &mut out)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, seconds: f32) -> Vec<i16> {
        let mut a = AudioSource::tone(hz).open().unwrap();
        (0..(seconds * 50.0) as usize).flat_map(|_| a.next_frame()).collect()
    }

    #[test]
    fn a_tone_is_found_and_an_absent_one_is_not() {
        let s = tone(440.0, 1.0);
        assert!(tone_share(&s, 440.0) > 0.9, "{}", tone_share(&s, 440.0));
        assert!(tone_share(&s, 660.0) < 0.01);
    }

    #[test]
    fn two_tones_mixed_are_the_two_dominant_frequencies() {
        let a = tone(660.0, 1.0);
        let b = tone(880.0, 1.0);
        let mix: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x / 2 + y / 2).collect();
        let mut f: Vec<f32> = dominant_frequencies(&mix, 3).into_iter().map(|(hz, _)| hz).collect();
        f.sort_by(f32::total_cmp);
        assert_eq!(f, vec![660.0, 880.0]);
    }

    #[test]
    fn silence_has_no_dominant_frequency() {
        assert!(dominant_frequencies(&[0; 48000], 3).is_empty());
    }

    #[test]
    fn opus_round_trip_keeps_the_tone() {
        let s = tone(660.0, 1.0);
        let mut enc = opus_codec::Encoder::new().unwrap();
        let mut dec = opus_codec::Decoder::new().unwrap();
        let out: Vec<i16> = s.chunks(FRAME_SAMPLES).flat_map(|f| dec.decode(Some(&enc.encode(f).unwrap())).unwrap()).collect();
        assert!(tone_share(&out[4800..], 660.0) > 0.8);
    }

    /// Encodes 20 frames of 440 Hz then 880 Hz (from frame 10) with `loss` percent expected, and
    /// rebuilds frame 10 from frame 11's in-band FEC: the share of 880 Hz in what comes out.
    fn share_rebuilt_from_fec(fec: bool, loss: u8) -> f64 {
        let mut enc = opus_codec::Encoder::new().unwrap();
        enc.set_inband_fec(fec).unwrap();
        enc.set_expected_loss(loss).unwrap();
        assert_eq!(enc.expected_loss(), loss);
        let (mut low, mut high) = (AudioSource::tone(440.0).open().unwrap(), AudioSource::tone(880.0).open().unwrap());
        let packets: Vec<Vec<u8>> =
            (0..20).map(|i| if i < 10 { low.next_frame() } else { high.next_frame() }).map(|f| enc.encode(&f).unwrap()).collect();
        let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).unwrap();
        let mut out = vec![0i16; FRAME_SAMPLES];
        for p in &packets[..10] {
            dec.decode(p, &mut out, false).unwrap();
        }
        let n = dec.decode(&packets[11], &mut out, true).unwrap();
        tone_share(&out[..n], 880.0)
    }

    #[test]
    fn an_encoder_told_to_expect_loss_sends_fec_that_rebuilds_a_lost_frame() {
        let with = share_rebuilt_from_fec(true, 20);
        // FEC is a leaner copy, decoded across the change of tone: well above nothing, not all.
        assert!(with > 0.2, "the frame rebuilt from FEC holds {with} of 880 Hz");
        // Without FEC, or expecting no loss, the decoder can only conceal: no 880 Hz yet.
        let off = share_rebuilt_from_fec(false, 20);
        let none = share_rebuilt_from_fec(true, 0);
        assert!(off < 0.05 && none < 0.05, "no FEC, yet 880 Hz came back: {off}, {none}");
    }

    #[test]
    fn a_missing_wav_file_is_an_error_naming_it() {
        let e = AudioSource::Wav("/nonexistent/x.wav".into()).open().unwrap_err();
        assert!(e.contains("/nonexistent/x.wav"), "{e}");
    }
}
