"""flowsuite.pointflow: category-conditional point-cloud flows.

``model.PointFlowModel`` (the generator), ``metrics`` (CD, EMD, MMD / COV / 1-NNA) and ``export``
(``.ply``, PNG previews, meshes; it imports open3d and matplotlib, so it is not loaded here).
"""

from flowsuite.pointflow.model import PointFlowModel

__all__ = ["PointFlowModel"]
