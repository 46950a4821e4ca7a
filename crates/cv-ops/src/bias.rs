//! Per-channel bias of an NCHW tensor as one op. candle's `broadcast_add` backward sums the
//! gradient over the broadcast dimensions with a strided, single-threaded reduction, a large
//! share of a small network's training step. Here the forward adds in one parallel pass and the
//! backward passes the gradient through and sums each channel's planes contiguously.

use crate::error::OpsError;
use crate::op::float_op;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const ADD: &str = "cv-ops add_channel_bias";
const SUM: &str = "cv-ops channel_sums";

/// `y[n, c, ..] + b[c]`, with gradients for both.
pub(crate) struct AddChannelBias;

/// `dy [n, c, ..] -> [c]`: the sum of every value of each channel.
pub(crate) struct ChannelSums;

/// (images, channels, values per channel plane) of an `[n, c, ..]` layout.
fn nc_plane(l: &Layout, op: &'static str) -> Result<(usize, usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 {
        return Err(OpsError::Shape {
            op,
            what: "input",
            shape: dims.to_vec(),
            expected: "[n, c, ...]".into(),
        }
        .into());
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

fn add<T: Copy + Send + Sync + std::ops::Add<Output = T>>(
    y: &[T],
    b: &[T],
    c: usize,
    plane: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(y.len());
    out.extend_from_slice(y);
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
            let v = b[i % c];
            for x in p {
                *x = *x + v;
            }
        });
    }
    out
}

fn sums<T: Copy + Send + Sync + Default + std::ops::Add<Output = T>>(
    dy: &[T],
    n: usize,
    c: usize,
    plane: usize,
) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = T::default();
            for img in 0..n {
                let at = (img * c + ch) * plane;
                acc = dy[at..at + plane].iter().fold(acc, |a, &v| a + v);
            }
            acc
        })
        .collect()
}

impl CustomOp2 for AddChannelBias {
    fn name(&self) -> &'static str {
        ADD
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, plane) = nc_plane(l1, ADD)?;
        if l2.dims() != [c] {
            return Err(OpsError::Shape {
                op: ADD,
                what: "bias",
                shape: l2.dims().to_vec(),
                expected: format!("[{c}]"),
            }
            .into());
        }
        let out = float_op!(
            ADD,
            [(y, s1, l1, "input"), (b, s2, l2, "bias")],
            add(y, b, c, plane)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = y.track_op().then(|| grad.clone());
        let db = if b.track_op() {
            Some(grad.contiguous()?.apply_op1_no_bwd(&ChannelSums)?)
        } else {
            None
        };
        Ok((dy, db))
    }
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        SUM
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, plane) = nc_plane(l, SUM)?;
        let out = float_op!(SUM, [(d, s, l, "input")], sums(d, n, c, plane));
        Ok((out, Shape::from(c)))
    }
}
