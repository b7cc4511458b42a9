"""Quality metrics for synthetic 3D volumes: pure functions (numpy/torch, no Ray).

- ``features``:  a small self-supervised 3D encoder trained on the real training split (frozen, hashed) and its
  features; the real-set feature cache keyed by (extractor hash, data hash).
- ``distances``: Fréchet distance, unbiased KID, Gaussian-kernel MMD (median heuristic) between feature sets.
- ``physics``:   power-spectrum distance, intensity-histogram W1 and tissue fractions, 3D MS-SSIM diversity,
  nearest-training-volume distance (no learned model).
- ``seam``:      the phase-matched seam score at the depths where rendered sub-volumes meet.
- ``quick``:     ``fd_ssl_quick``, the cheap training-time score.
- ``med3d``:     the published protocol's MedicalNet ResNet-50 features, when the user supplies the weights.
"""
