"""A pinhole camera with a yaw/pitch/roll pose in a z-up world.

World frame: x east, y north, z up (metres); the floor is ``z = 0``. Camera frame (OpenCV): x right,
y down, z forward. ``yaw = 0`` looks along +y, positive yaw turns toward +x; positive ``pitch`` looks
down; ``roll`` turns the camera about its optical axis (the right axis toward the down axis).

Pixel ``(u, v)`` (column, row) has its centre at ``u, v`` in ``K`` coordinates (OpenCV convention), so
``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` with ``cx = (W − 1)/2`` for a centred principal point and
a ray through pixel ``(u, v)`` has camera direction ``((u − cx)/fx, (v − cy)/fy, 1)``. Because that
direction has camera-z 1, the ray parameter ``t`` of a hit equals its depth (camera z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Camera:
    """Pose and intrinsics of a ``width × height`` pinhole camera (angles in radians)."""

    position: Vec3
    yaw: float
    pitch: float
    roll: float
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(
        cls, position: Vec3, yaw: float, pitch: float, roll: float, hfov: float, width: int, height: int
    ) -> Camera:
        """A camera with square pixels, a centred principal point and horizontal field of view ``hfov``."""
        f = 0.5 * width / math.tan(0.5 * hfov)
        return cls(position, yaw, pitch, roll, f, f, 0.5 * (width - 1), 0.5 * (height - 1), width, height)

    def K(self) -> np.ndarray:
        """Intrinsics ``(3, 3)`` float32."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float32)

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation ``(3, 3)`` float64; columns are the camera x (right), y (down), z (forward) axes."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([sy * cp, cy * cp, -sp])
        right = np.array([cy, -sy, 0.0])
        down = np.array([-sp * sy, -sp * cy, -cp])  # forward × right
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        right, down = cr * right + sr * down, cr * down - sr * right
        return np.stack([right, down, forward], axis=1)  # (3, 3) columns

    def ray_directions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World directions ``(dx, dy, dz)``, each ``(H, W)`` float32, of the rays through every pixel
        centre, scaled so their camera-z component is 1."""
        rot = self.rotation()
        xs = ((np.arange(self.width) - self.cx) / self.fx).astype(np.float32)  # (W,)
        ys = ((np.arange(self.height) - self.cy) / self.fy).astype(np.float32)  # (H,)
        dirs = []
        for axis in range(3):
            rx, ry, rz = (float(v) for v in rot[axis])
            dirs.append(ys[:, None] * ry + (xs[None, :] * rx + rz))  # (H, W)
        return dirs[0], dirs[1], dirs[2]

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """Points ``(N, 3)`` in the world to camera coordinates ``(N, 3)``."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.position)) @ self.rotation()

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` to pixel coordinates ``(N, 2)`` as ``(u, v)``; points behind the camera
        give meaningless values (check ``world_to_camera(points)[:, 2] > 0``)."""
        cam = self.world_to_camera(points)
        return np.stack(
            [self.fx * cam[:, 0] / cam[:, 2] + self.cx, self.fy * cam[:, 1] / cam[:, 2] + self.cy], 1
        )
