//! `cv_ops::conv2d` and its gradients against candle's reference convolution and its autograd,
//! and against finite differences in f64.

use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic pseudo-random values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let len = dims.iter().product();
    Tensor::from_vec(values(len, seed), dims, &Device::Cpu)?.to_dtype(dtype)
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
    let diff = (a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const fn case(
    n: usize,
    c: usize,
    hw: (usize, usize),
    co: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Case {
    Case {
        n,
        c,
        h: hw.0,
        w: hw.1,
        co,
        k,
        stride: s,
        pad: p,
    }
}

/// The ResNet-18 and small-CNN conv shapes at small sizes, plus cases that exercise every
/// tiling path (tiles inside an image, groups of images, one image, the pointwise path).
const CASES: &[Case] = &[
    case(2, 3, (19, 19), 8, 7, 2, 3), // ResNet stem 7x7/2 pad 3, odd size
    case(1, 3, (32, 32), 16, 7, 2, 3), // stem, batch 1
    case(3, 5, (9, 7), 6, 3, 1, 1),   // 3x3/1 pad 1, non-square
    case(4, 16, (4, 4), 16, 3, 1, 1), // 3x3 on a small map, batched across images
    case(4, 8, (1, 1), 8, 3, 1, 1),   // 3x3 on a 1x1 map (ResNet layer4 at 32x32 inputs)
    case(2, 4, (10, 10), 6, 3, 2, 1), // 3x3/2 pad 1, even
    case(2, 4, (9, 9), 6, 3, 2, 1),   // 3x3/2 pad 1, odd
    case(4, 8, (8, 8), 16, 1, 2, 0),  // 1x1/2 downsample
    case(3, 8, (7, 7), 16, 1, 2, 0),  // 1x1/2 on odd size: last row/column unused
    case(2, 6, (5, 5), 4, 1, 1, 0),   // 1x1/1: input read in place
    case(1, 3, (32, 32), 6, 5, 1, 0), // small CNN conv1
    case(4, 6, (14, 14), 16, 5, 1, 0), // small CNN conv2
    case(2, 64, (16, 16), 8, 3, 1, 1), // large k: several tiles per image
    case(2, 64, (30, 30), 8, 3, 2, 1), // several tiles per image, stride 2 (col2im path)
    case(1, 2, (2, 2), 3, 3, 2, 2),   // padding larger than the valid region
    case(3, 8, (2, 2), 12, 3, 1, 1),  // 3x3 on a 2x2 map (layer3 at 32x32): per-tap gemms
    case(2, 8, (4, 4), 8, 3, 2, 1),   // 3x3/2 from 4x4 to 2x2 (layer3's first conv)
    case(2, 6, (3, 3), 5, 3, 2, 1),   // 3x3/2 on an odd tiny map
    case(5, 4, (4, 4), 7, 3, 1, 1),   // 3x3 on 4x4 (layer2 at 32x32)
    case(2, 8, (28, 28), 13, 3, 1, 1), // f32 on AVX2: padded direct kernel, both directions
    case(1, 4, (30, 31), 5, 5, 1, 2), // the same with a 5x5 kernel, non-square
    case(2, 128, (8, 9), 128, 3, 1, 1), // Winograd: forward, input and weight gradients
];

/// Gradients of `sum(conv(x, w) * r)` with respect to x and w, and the output, from `conv`.
fn run(
    c: &Case,
    dtype: DType,
    conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    run_on(c, |dims, seed| tensor(dims, seed, dtype), conv)
}

/// [`run`] on the tensors `make(dims, seed)` gives.
fn run_on(
    c: &Case,
    make: impl Fn(&[usize], u64) -> Result<Tensor>,
    conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = Var::from_tensor(&make(&[c.n, c.c, c.h, c.w], 1)?)?;
    let w = Var::from_tensor(&make(&[c.co, c.c, c.k, c.k], 2)?)?;
    let y = conv(x.as_tensor(), w.as_tensor())?;
    let r = make(y.dims(), 3)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let gx = grads.get(x.as_tensor()).expect("grad of x").clone();
    let gw = grads.get(w.as_tensor()).expect("grad of w").clone();
    Ok((y, gx, gw))
}

fn check_against_candle(dtype: DType, tol: f64) -> Result<()> {
    for c in CASES {
        let (y, gx, gw) = run(c, dtype, |x, w| cv_ops::conv2d(x, w, c.stride, c.pad))?;
        let (ry, rgx, rgw) = run(c, dtype, |x, w| x.conv2d(w, c.pad, c.stride, 1, 1))?;
        let (ey, ex, ew) = (rel_err(&y, &ry)?, rel_err(&gx, &rgx)?, rel_err(&gw, &rgw)?);
        assert!(
            ey < tol && ex < tol && ew < tol,
            "{c:?} {dtype:?}: output {ey:.2e}, dx {ex:.2e}, dw {ew:.2e}"
        );
    }
    Ok(())
}

/// Under autocast, output and gradients equal the exact (f64) convolution of the operands
/// rounded to bf16, up to f32 summation, and differ from the f32 results by bf16's rounding.
#[test]
fn bf16_autocast_output_and_gradients_are_the_products_of_rounded_operands() -> Result<()> {
    let guard = match cv_ops::autocast_bf16() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("notice: {e}; the bf16 convolution is not tested on this CPU");
            return Ok(());
        }
    };
    fn conv(c: &Case) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> + '_ {
        move |x, w| cv_ops::conv2d(x, w, c.stride, c.pad)
    }
    let bf16: Vec<_> = CASES.iter().map(|c| run(c, DType::F32, conv(c))).collect();
    drop(guard);
    // Through f32 as the bf16 run's operands (f64 -> bf16 directly can round differently).
    let rounded = |dims: &[usize], seed| {
        tensor(dims, seed, DType::F32)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F64)
    };
    for (c, got) in CASES.iter().zip(bf16) {
        let got = got?;
        let want = run_on(c, rounded, conv(c))?;
        let f32 = run(c, DType::F32, conv(c))?;
        for (what, g, w, f) in [
            ("output", &got.0, &want.0, &f32.0),
            ("dx", &got.1, &want.1, &f32.1),
            ("dw", &got.2, &want.2, &f32.2),
        ] {
            let (err, off) = (rel_err(g, w)?, rel_err(g, f)?);
            assert!(
                err < 1e-5,
                "{c:?} {what}: {err:.2e} from the rounded reference"
            );
            assert!(
                off > 1e-4,
                "{c:?} {what}: only {off:.2e} from f32: not rounded?"
            );
        }
    }
    Ok(())
}

#[test]
fn f32_output_and_gradients_match_candle() -> Result<()> {
    check_against_candle(DType::F32, 1e-4)
}

#[test]
fn f64_output_and_gradients_match_candle() -> Result<()> {
    check_against_candle(DType::F64, 1e-12)
}

#[test]
fn results_do_not_depend_on_thread_count() -> Result<()> {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for c in [CASES[0], CASES[3], CASES[5], CASES[12], CASES[13]] {
            let want = run(&c, DType::F64, |x, w| x.conv2d(w, c.pad, c.stride, 1, 1))?;
            let got =
                pool.install(|| run(&c, DType::F64, |x, w| cv_ops::conv2d(x, w, c.stride, c.pad)))?;
            for (a, b) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                assert!(rel_err(a, b)? < 1e-12, "{threads} threads, {c:?}");
            }
        }
    }
    Ok(())
}

/// Central differences of `L(x, w) = sum(conv(x, w) * r)` in f64 for every element of x and w.
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    for c in [
        case(2, 3, (6, 5), 4, 3, 2, 1),
        case(1, 2, (5, 6), 3, 3, 1, 1),
        case(2, 2, (7, 7), 2, 1, 2, 0),
    ] {
        let (y, gx, gw) = run(&c, DType::F64, |x, w| cv_ops::conv2d(x, w, c.stride, c.pad))?;
        let x0 = values(c.n * c.c * c.h * c.w, 1);
        let w0 = values(c.co * c.c * c.k * c.k, 2);
        let r = tensor(y.dims(), 3, DType::F64)?;
        let loss = |x: &[f64], w: &[f64]| -> Result<f64> {
            let x = Tensor::from_slice(x, (c.n, c.c, c.h, c.w), &Device::Cpu)?;
            let w = Tensor::from_slice(w, (c.co, c.c, c.k, c.k), &Device::Cpu)?;
            (cv_ops::conv2d(&x, &w, c.stride, c.pad)? * &r)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let h = 1e-4;
        let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> Result<f64>| -> Result<f64> {
            let (mut a, mut b) = (v.to_vec(), v.to_vec());
            a[i] += h;
            b[i] -= h;
            Ok((f(&a)? - f(&b)?) / (2.0 * h))
        };
        let gx = gx.flatten_all()?.to_vec1::<f64>()?;
        let gw = gw.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!((gx.len(), gw.len()), (x0.len(), w0.len()));
        for (i, g) in gx.iter().enumerate() {
            let d = fd(&x0, i, &|x| loss(x, &w0))?;
            assert!((d - g).abs() < 1e-8, "{c:?} dx[{i}]: fd {d} vs {g}");
        }
        for (i, g) in gw.iter().enumerate() {
            let d = fd(&w0, i, &|w| loss(&x0, w))?;
            assert!((d - g).abs() < 1e-8, "{c:?} dw[{i}]: fd {d} vs {g}");
        }
    }
    Ok(())
}

#[test]
fn input_without_variable_gets_no_gradient_but_weight_does() -> Result<()> {
    let c = CASES[0];
    let x = tensor(&[c.n, c.c, c.h, c.w], 1, DType::F32)?;
    let w = Var::from_tensor(&tensor(&[c.co, c.c, c.k, c.k], 2, DType::F32)?)?;
    let grads = cv_ops::conv2d(&x, w.as_tensor(), c.stride, c.pad)?
        .sum_all()?
        .backward()?;
    assert!(grads.get(&x).is_none());
    let reference = x
        .conv2d(w.as_tensor(), c.pad, c.stride, 1, 1)?
        .sum_all()?
        .backward()?;
    let e = rel_err(
        grads.get(w.as_tensor()).unwrap(),
        reference.get(w.as_tensor()).unwrap(),
    )?;
    assert!(e < 1e-4, "{e}");
    Ok(())
}

#[test]
fn non_contiguous_input_gets_its_gradient() -> Result<()> {
    // x is stored [n, h, c, w] and viewed as NCHW through a transpose.
    let xs = Var::from_tensor(&tensor(&[2, 6, 3, 6], 4, DType::F32)?)?;
    let w = tensor(&[4, 3, 3, 3], 5, DType::F32)?;
    let ours = cv_ops::conv2d(&xs.as_tensor().transpose(1, 2)?, &w, 1, 1)?;
    let theirs = xs.as_tensor().transpose(1, 2)?.conv2d(&w, 1, 1, 1, 1)?;
    assert!(rel_err(&ours, &theirs)? < 1e-5);
    let g1 = ours.sqr()?.sum_all()?.backward()?;
    let g2 = theirs.sqr()?.sum_all()?.backward()?;
    let e = rel_err(
        g1.get(xs.as_tensor()).unwrap(),
        g2.get(xs.as_tensor()).unwrap(),
    )?;
    assert!(e < 1e-4, "{e}");
    Ok(())
}

#[test]
fn gradient_kernels_called_directly_match_autograd() -> Result<()> {
    let c = CASES[5];
    let x = tensor(&[c.n, c.c, c.h, c.w], 1, DType::F32)?;
    let w = tensor(&[c.co, c.c, c.k, c.k], 2, DType::F32)?;
    let y = cv_ops::conv2d(&x, &w, c.stride, c.pad)?;
    let dy = tensor(y.dims(), 3, DType::F32)?;
    let (_, rgx, rgw) = run(&c, DType::F32, |x, w| x.conv2d(w, c.pad, c.stride, 1, 1))?;
    let gx = cv_ops::conv2d_input_grad(&dy, &w, (c.h, c.w), c.stride, c.pad)?;
    let gw = cv_ops::conv2d_weight_grad(&x, &dy, (c.k, c.k), c.stride, c.pad)?;
    assert!(rel_err(&gx, &rgx)? < 1e-4);
    assert!(rel_err(&gw, &rgw)? < 1e-4);
    Ok(())
}

#[test]
fn other_dtypes_fall_back_to_candle() -> Result<()> {
    let x = tensor(&[2, 3, 8, 8], 1, DType::F16)?;
    let w = tensor(&[4, 3, 3, 3], 2, DType::F16)?;
    assert!(!cv_ops::uses_fast_path(&x, &w));
    let ours = cv_ops::conv2d(&x, &w, 2, 1)?;
    let theirs = x.conv2d(&w, 1, 2, 1, 1)?;
    assert_eq!(ours.dtype(), DType::F16);
    assert_eq!(rel_err(&ours, &theirs)?, 0.0);
    Ok(())
}

#[test]
fn bad_shapes_are_errors_not_panics() -> Result<()> {
    let x = tensor(&[2, 3, 8, 8], 1, DType::F32)?;
    let w = tensor(&[4, 5, 3, 3], 2, DType::F32)?;
    let e = cv_ops::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(e.contains("channels"), "{e}");
    let big = tensor(&[4, 3, 11, 11], 2, DType::F32)?;
    let e = cv_ops::conv2d(&x, &big, 1, 1).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let w = tensor(&[4, 3, 3, 3], 2, DType::F32)?;
    let e = cv_ops::conv2d(&x, &w, 0, 1).unwrap_err().to_string();
    assert!(e.contains("stride 0"), "{e}");
    let dy = tensor(&[2, 4, 5, 5], 3, DType::F32)?;
    let e = cv_ops::conv2d_input_grad(&dy, &w, (8, 8), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("output gradient"), "{e}");
    let e = cv_ops::conv2d_weight_grad(&x, &dy, (3, 3), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("output gradient"), "{e}");
    let mixed = w.to_dtype(DType::F64)?;
    assert!(cv_ops::conv2d(&x, &mixed, 1, 1).is_err());
    Ok(())
}

/// Gradients pass through a chain (conv -> relu -> strided conv) to every variable.
#[test]
fn gradients_flow_through_a_chain_of_convs() -> Result<()> {
    let x = Var::from_tensor(&tensor(&[2, 3, 12, 12], 7, DType::F32)?)?;
    let w1 = Var::from_tensor(&tensor(&[8, 3, 3, 3], 8, DType::F32)?)?;
    let w2 = Var::from_tensor(&tensor(&[4, 8, 3, 3], 9, DType::F32)?)?;
    let r = tensor(&[2, 4, 6, 6], 10, DType::F32)?;
    let ours = {
        let h = cv_ops::conv2d(x.as_tensor(), w1.as_tensor(), 1, 1)?.relu()?;
        cv_ops::conv2d(&h, w2.as_tensor(), 2, 1)?
    };
    let theirs = {
        let h = x.as_tensor().conv2d(w1.as_tensor(), 1, 1, 1, 1)?.relu()?;
        h.conv2d(w2.as_tensor(), 1, 2, 1, 1)?
    };
    let g1 = (ours * &r)?.sum_all()?.backward()?;
    let g2 = (theirs * &r)?.sum_all()?.backward()?;
    for v in [&x, &w1, &w2] {
        let e = rel_err(
            g1.get(v.as_tensor()).unwrap(),
            g2.get(v.as_tensor()).unwrap(),
        )?;
        assert!(e < 1e-4, "{:?}: {e}", v.dims());
    }
    Ok(())
}
