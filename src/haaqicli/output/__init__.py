"""What a run writes and how it is read: `tables` (the score tables' one schema, atomic CSV / Parquet /
JSON Lines, resume), `report` (Markdown / HTML reports) and `ceiling` (the clean-music top of the scale
per profile, which the report and `haaqi profiles` show)."""
