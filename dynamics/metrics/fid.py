"""Image metrics through torch-fidelity: a digits Frechet distance and Inception FID at paper scale.

Digits scale. Inception features of 8x8 digits upsampled to 299x299 say little about digits, so the
digits scale measures a Frechet distance in the features of a small CNN trained on the digits train
split (offline, seconds on a CPU, fixed seed). It is trained once and cached in `$DYNAMICS_CACHE` (or
`~/.cache/dynamics`), and registered as the torch-fidelity feature extractor `dynamics-digits-cnn`, so
`torch_fidelity.calculate_metrics` computes the distance. Two numbers are only comparable when they come
from the same classifier (same seed and version: see `digits_classifier_path`).

Quantisation round trip. torch-fidelity's convention is uint8 images in [0, 255]; images in [-1, 1] are
converted with ADM's rule `uint8(clamp((x + 1) * 127.5, 0, 255))` (truncation, as in ADM's sampling
scripts), and the extractor maps them back with `u / 127.5 - 1` before the classifier. The round trip
moves a pixel down by less than one 8-bit level (< 2/255 in [-1, 1] units). Real and generated images
go through the same path, as they would through PNG files, so the distance compares like with like.

Paper scale. `inception_fid` computes FID against an ADM-style reference .npz (`mu`, `sigma` of the
2048-d pool features, as in ADM's VIRTUAL_imagenet256_labeled.npz) with torch-fidelity's
`inception-v3-compat` extractor: a port of the same TF 2015-12-05 graph ADM's evaluator runs, including
its TF1 bilinear resize to 299 and (x - 128) / 128 scaling, fed uint8 [0, 255] images like ADM's. The
weights are read from a local file only; nothing is ever downloaded at run time.

The code is in three modules, re-exported here: `frechet` (the formula), `digits_fd` (the classifier, its
distance and class accuracy; the torch-fidelity extractor is registered on first use), `inception` (FID at
paper scale); `images` holds what they share.
"""

from .digits_fd import (
    CLASSIFIER_VERSION,
    EXTRACTOR_NAME,
    FEATURE_LAYERS,
    DigitsClassifier,
    DigitsFeatureExtractor,
    digits_class_accuracy,
    digits_classifier_path,
    digits_fd,
    ensure_digits_classifier,
    load_digits_classifier,
    one_cpu_thread,
    register_extractor,
    train_digits_classifier,
)
from .frechet import feature_statistics, frechet_distance
from .images import ImageDataset, default_cache_dir, to_uint8
from .inception import (
    INCEPTION_WEIGHTS_FILENAME,
    InceptionWeightsMissing,
    inception_features,
    inception_fid,
    inception_weights_candidates,
    load_reference_stats,
    resolve_inception_weights,
)

__all__ = [
    "CLASSIFIER_VERSION", "EXTRACTOR_NAME", "FEATURE_LAYERS", "INCEPTION_WEIGHTS_FILENAME", "DigitsClassifier",
    "DigitsFeatureExtractor", "ImageDataset", "InceptionWeightsMissing", "default_cache_dir", "digits_class_accuracy",
    "digits_classifier_path", "digits_fd", "ensure_digits_classifier", "feature_statistics", "frechet_distance",
    "inception_features", "inception_fid", "inception_weights_candidates", "load_digits_classifier",
    "load_reference_stats", "one_cpu_thread", "register_extractor", "resolve_inception_weights",
    "to_uint8", "train_digits_classifier",
]
