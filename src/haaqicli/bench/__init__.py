"""`haaqi bench`: `timing` times the model, the exact HAAQI and a cluster against pyclarity's HAAQI in
the same run; `e2e` times whole `haaqi` processes on generated folders (start-up included)."""
