"""Ray Data: read laion-art-schema parquet, preprocess, encode."""
