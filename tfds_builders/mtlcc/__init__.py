"""MTLCC (Rußwurm & Körner 2018): Bavarian S2 time series as gzip TFRecords, read without TF."""

from tfds_builders.mtlcc.builder import Mtlcc
from tfds_builders.mtlcc.example import parse_example
from tfds_builders.mtlcc.tfrecord import crc32c, crc32c_table, masked_crc32c, read_records

__all__ = ["Mtlcc", "crc32c", "crc32c_table", "masked_crc32c", "parse_example", "read_records"]
