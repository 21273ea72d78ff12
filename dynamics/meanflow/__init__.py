"""MeanFlow: the path, (t, r) samplers, the JVP target, the split loss and sampling."""

from .loss import Draw, LossOutput, MeanFlowLoss, adaptive_loss, guided_velocity
from .path import conditional_velocity, interpolate
from .samplers import DtBinSampler, LogitNormalSampler, TimeSampler, UniformSampler, build_sampler
from .sampling import generate, sample, sample_euler_v, uniform_schedule
from .target import mean_flow_target, total_derivative

__all__ = [
    "Draw", "LossOutput", "MeanFlowLoss", "adaptive_loss", "guided_velocity", "conditional_velocity", "interpolate",
    "DtBinSampler", "LogitNormalSampler", "TimeSampler", "UniformSampler", "build_sampler", "generate",
    "sample", "sample_euler_v", "uniform_schedule", "mean_flow_target", "total_derivative",
]
