"""flowsuite.pointflow: category-conditional point-cloud flows."""
