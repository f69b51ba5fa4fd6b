"""toyworld: procedural 3D scenes ray-cast into images with exact depth, semantic and instance labels.

>>> from anydistill.data.toyworld import render_sample, ToyWorldDataset, write_toyworld
>>> sample = render_sample(index=5, seed=0, domain="narrow", size=128)
"""

from anydistill.data.toyworld.camera import Camera
from anydistill.data.toyworld.classes import CLASSES, IGNORE_INDEX, class_table
from anydistill.data.toyworld.dataset import TOYWORLD_HELDOUT_SEED_OFFSET, ToyWorldDataset
from anydistill.data.toyworld.domains import DOMAINS, Domain, get_domain
from anydistill.data.toyworld.primitives import Box, Cone, Cylinder, Ellipsoid, Primitive, Sphere
from anydistill.data.toyworld.render import render
from anydistill.data.toyworld.sample import GENERATOR_VERSION, make_scene, render_sample
from anydistill.data.toyworld.scene import Light, Room, Scene, Sky, sample_scene
from anydistill.data.toyworld.textures import Material
from anydistill.data.toyworld.writer import write_toyworld

__all__ = [
    "CLASSES",
    "DOMAINS",
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "TOYWORLD_HELDOUT_SEED_OFFSET",
    "Box",
    "Camera",
    "Cone",
    "Cylinder",
    "Domain",
    "Ellipsoid",
    "Light",
    "Material",
    "Primitive",
    "Room",
    "Scene",
    "Sky",
    "Sphere",
    "ToyWorldDataset",
    "class_table",
    "get_domain",
    "make_scene",
    "render",
    "render_sample",
    "sample_scene",
    "write_toyworld",
]
