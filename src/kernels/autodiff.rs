//! The backward pass of apunet's kernels: `CpuKernels` on burn's `Autodiff` backend, with a
//! handwritten `Backward` per op, as burn's backend extensions take them.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, TensorMetadata};

use super::{AttnGeom, ConvGeom, CpuKernels, NormGeom, direct, weight_grad};

#[derive(Debug)]
struct ConvBackward;

/// What the backward pass reads x from: its checkpoint, or the padded NHWC copy the forward
/// made on the direct kernels (then x itself need not be kept).
#[derive(Clone, Debug)]
enum ConvInput<T> {
    Node(NodeId),
    Nhwc(T),
}

/// Parents: x, weight and bias (a constant zero when the layer has none).
impl<B: CpuKernels> Backward<B, 3> for ConvBackward {
    type State = (ConvInput<FloatTensor<B>>, NodeId, ConvGeom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (input, w_id, g) = ops.state;
        let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w_id);
        match (input, node_x, node_w) {
            (ConvInput::Nhwc(x), Some(nx), Some(nw)) if weight_grad::shares_grad(&g) => {
                let (dx, dw) = B::conv2d_direct_backward(x, w, grad.clone(), g);
                grads.register::<B>(nx.id, dx);
                grads.register::<B>(nw.id, dw);
            }
            (input, node_x, node_w) => {
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::conv2d_x_grad(w, grad.clone(), g));
                }
                if let Some(node) = node_w {
                    let dw = match input {
                        ConvInput::Nhwc(x) => B::conv2d_direct_weight_backward(x, grad.clone(), g),
                        ConvInput::Node(x) => B::conv2d_weight_grad(checkpointer.retrieve_node_output(x), grad.clone(), g),
                    };
                    grads.register::<B>(node.id, dw);
                }
            }
        }
        if let Some(node) = node_b {
            let summed = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(grad, 3), 2), 0);
            grads.register::<B>(node.id, B::float_reshape(summed, [g.c_out].into()));
        }
    }
}

impl<B: CpuKernels, C: CheckpointStrategy> CpuKernels for Autodiff<B, C> {
    fn conv2d_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, g: ConvGeom) -> FloatTensor<Self> {
        let prep = <ConvBackward as Backward<B, 3>>::prepare::<C>(ConvBackward, [x.node(), weight.node(), bias.node()]);
        match prep.compute_bound().stateful() {
            // A weight gradient to come: keep the forward's NHWC input instead of x.
            OpsKind::Tracked(mut prep) if weight.is_tracked() && direct::available() => {
                let w_id = prep.checkpoint(&weight);
                let (out, nhwc) = B::conv2d_direct_keep(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), g);
                prep.finish((ConvInput::Nhwc(nhwc), w_id, g), out)
            }
            OpsKind::Tracked(mut prep) => {
                let state = (ConvInput::Node(prep.checkpoint(&x)), prep.checkpoint(&weight), g);
                prep.finish(state, B::conv2d_forward(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), g))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_forward(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), g))
            }
        }
    }

    fn conv2d_direct_keep(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, nhwc) = B::conv2d_direct_keep(Self::inner(x), Self::inner(weight), Self::inner(bias), g);
        (Self::from_inner(out), Self::from_inner(nhwc))
    }

    fn conv2d_direct_weight_backward(x_nhwc: FloatTensor<Self>, grad: FloatTensor<Self>, g: ConvGeom) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_direct_weight_backward(Self::inner(x_nhwc), Self::inner(grad), g))
    }

    fn conv2d_direct_backward(
        x_nhwc: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::conv2d_direct_backward(Self::inner(x_nhwc), Self::inner(weight), Self::inner(grad), g);
        (Self::from_inner(dx), Self::from_inner(dw))
    }

    fn conv2d_x_grad(weight: FloatTensor<Self>, grad: FloatTensor<Self>, g: ConvGeom) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_x_grad(Self::inner(weight), Self::inner(grad), g))
    }

    fn conv2d_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, g: ConvGeom) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_weight_grad(Self::inner(x), Self::inner(grad), g))
    }

    fn conv_transpose2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: ConvGeom,
    ) -> FloatTensor<Self> {
        let prep = <ConvTransposeBackward as Backward<B, 3>>::prepare::<C>(ConvTransposeBackward, [x.node(), weight.node(), bias.node()]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), g);
                prep.finish(state, B::conv_transpose2d_forward(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), g))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv_transpose2d_forward(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), g))
            }
        }
    }

    fn conv_transpose2d_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::conv_transpose2d_grads(Self::inner(x), Self::inner(weight), Self::inner(grad), g);
        (Self::from_inner(dx), Self::from_inner(dw))
    }

    fn avg_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let dims: [usize; 4] = x.shape().dims::<4>();
        match PoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(dims, B::avg_pool2x2(x.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(B::avg_pool2x2(x.into_primitive())),
        }
    }

    fn avg_pool2x2_backward(grad: FloatTensor<Self>, dims: [usize; 4]) -> FloatTensor<Self> {
        Self::from_inner(B::avg_pool2x2_backward(Self::inner(grad), dims))
    }

    fn reflect_pad(x: FloatTensor<Self>, p: usize) -> FloatTensor<Self> {
        let dims: [usize; 4] = x.shape().dims::<4>();
        match PadBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((dims, p), B::reflect_pad(x.into_primitive(), p)),
            OpsKind::UnTracked(prep) => prep.finish(B::reflect_pad(x.into_primitive(), p)),
        }
    }

    fn reflect_pad_backward(grad: FloatTensor<Self>, dims: [usize; 4], p: usize) -> FloatTensor<Self> {
        Self::from_inner(B::reflect_pad_backward(Self::inner(grad), dims, p))
    }

    fn group_norm_fused(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, g: NormGeom) -> FloatTensor<Self> {
        let prep = <NormBackward as Backward<B, 3>>::prepare::<C>(NormBackward, [x.node(), gamma.node(), beta.node()]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta), g);
                prep.finish(state, B::group_norm_fused(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), g))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::group_norm_fused(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), g))
            }
        }
    }

    fn group_norm_fused_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        g: NormGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::group_norm_fused_backward(Self::inner(x), Self::inner(gamma), Self::inner(beta), Self::inner(grad), g);
        (Self::from_inner(dx), Self::from_inner(dgamma), Self::from_inner(dbeta))
    }

    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), B::gelu_exact(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_exact(x.into_primitive())),
        }
    }

    fn gelu_exact_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::gelu_exact_backward(Self::inner(x), Self::inner(grad)))
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        g: AttnGeom,
    ) -> FloatTensor<Self> {
        let prep = <AttentionBackward as Backward<B, 3>>::prepare::<C>(AttentionBackward, [q.node(), k.node(), v.node()]);
        let (q, k, v, labels) = (q.into_primitive(), k.into_primitive(), v.into_primitive(), labels.into_primitive());
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (o, lse) = B::fused_attention_keep(q.clone(), k.clone(), v.clone(), labels.clone(), g);
                prep.finish(AttnSaved { q, k, v, o: o.clone(), lse, labels, geom: g }, o)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(q, k, v, labels, g)),
        }
    }

    fn fused_attention_keep(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        g: AttnGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (o, lse) = B::fused_attention_keep(Self::inner(q), Self::inner(k), Self::inner(v), Self::inner(labels), g);
        (Self::from_inner(o), Self::from_inner(lse))
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        g: AttnGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let i = Self::inner;
        let (dq, dk, dv) = B::fused_attention_backward(i(q), i(k), i(v), i(o), i(lse), i(grad), i(labels), g);
        (Self::from_inner(dq), Self::from_inner(dk), Self::from_inner(dv))
    }
}

#[derive(Debug)]
struct AttentionBackward;

/// What the attention's backward pass recomputes its probabilities from: the inputs, the
/// output and the log-sum-exp of each query's scores (the score matrix itself is never kept).
#[derive(Debug, Clone)]
struct AttnSaved<T> {
    q: T,
    k: T,
    v: T,
    o: T,
    lse: T,
    labels: T,
    geom: AttnGeom,
}

/// Parents: q, k and v.
impl<B: CpuKernels> Backward<B, 3> for AttentionBackward {
    type State = AttnSaved<FloatTensor<B>>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (dq, dk, dv) = B::fused_attention_backward(s.q, s.k, s.v, s.o, s.lse, grad, s.labels, s.geom);
        for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct NormBackward;

/// Parents: x, gamma and beta (constants when the norm has no affine parameters).
impl<B: CpuKernels> Backward<B, 3> for NormBackward {
    type State = (NodeId, NodeId, NodeId, NormGeom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, gamma_id, beta_id, g) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_id);
        let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta_id);
        let (dx, dgamma, dbeta) = B::group_norm_fused_backward(x, gamma, beta, grad, g);
        for (node, grad) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct ConvTransposeBackward;

/// Parents: x, weight and bias (a constant zero when the layer has none).
impl<B: CpuKernels> Backward<B, 3> for ConvTransposeBackward {
    type State = (NodeId, NodeId, ConvGeom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, w_id, g) = ops.state;
        if node_x.is_some() || node_w.is_some() {
            let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
            let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w_id);
            let (dx, dw) = B::conv_transpose2d_grads(x, w, grad.clone(), g);
            for (node, grad) in [(node_x, dx), (node_w, dw)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
        if let Some(node) = node_b {
            // The bias is per channel of the output, which is `g`'s input.
            let summed = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(grad, 3), 2), 0);
            grads.register::<B>(node.id, B::float_reshape(summed, [g.c_in].into()));
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

/// Parent: x; the state is x's shape.
impl<B: CpuKernels> Backward<B, 1> for PoolBackward {
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::avg_pool2x2_backward(grad, ops.state));
        }
    }
}

#[derive(Debug)]
struct PadBackward;

/// Parent: x; the state is x's shape and the padding.
impl<B: CpuKernels> Backward<B, 1> for PadBackward {
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let (dims, p) = ops.state;
            grads.register::<B>(node.id, B::reflect_pad_backward(grad, dims, p));
        }
    }
}

#[derive(Debug)]
struct GeluBackward;

/// Parent: x; the state is x itself (the gradient needs Phi(x) and phi(x)).
impl<B: CpuKernels> Backward<B, 1> for GeluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::gelu_exact_backward(ops.state, grad));
        }
    }
}
