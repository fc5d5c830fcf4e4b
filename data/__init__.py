"""flowsuite.data: datasets and the shipped trained models.

Shapes: :func:`open_shapes` reads a folder (own layout, ShapeNetCore.v2.PC15k, ShapeNetCore.v2
meshes, ModelNet40) into a :class:`ShapeDataset`; :func:`write_shape_set` writes the procedural
set of :data:`SHAPE_CATEGORIES`; :func:`sample_shape` gives one procedural shape's points.
"""

from flowsuite.data.generate import write_shape_set
from flowsuite.data.procedural import CATEGORIES as SHAPE_CATEGORIES
from flowsuite.data.procedural import sample_shape, shape_mesh
from flowsuite.data.shapes import NORMALIZATIONS, ShapeDataset, ShapeFileWarning, open_shapes

__all__ = ["open_shapes", "ShapeDataset", "ShapeFileWarning", "NORMALIZATIONS",
           "write_shape_set", "sample_shape", "shape_mesh", "SHAPE_CATEGORIES"]
