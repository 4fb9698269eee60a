#!/usr/bin/env python3
"""Writes an F32 copy of a GGUF file (every tensor dequantized, metadata unchanged): the f32
reference for llama.cpp in `scripts/llamacpp_compare.py` and `scripts/quant_quality.py`.
A dev script (`pip install gguf`).

  scripts/gguf_to_f32.py IN.gguf OUT.gguf
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def copy_field(writer, field):
    if field.name.startswith("GGUF.") or field.name == "general.architecture":
        return  # written by the writer itself
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            values = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        else:
            values = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_array(field.name, values)
    elif kind == GGUFValueType.STRING:
        writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode("utf-8", "replace"))
    else:
        value = field.parts[field.data[0]].tolist()[0]
        {
            GGUFValueType.UINT8: writer.add_uint8,
            GGUFValueType.INT8: writer.add_int8,
            GGUFValueType.UINT16: writer.add_uint16,
            GGUFValueType.INT16: writer.add_int16,
            GGUFValueType.UINT32: writer.add_uint32,
            GGUFValueType.INT32: writer.add_int32,
            GGUFValueType.FLOAT32: writer.add_float32,
            GGUFValueType.UINT64: writer.add_uint64,
            GGUFValueType.INT64: writer.add_int64,
            GGUFValueType.FLOAT64: writer.add_float64,
            GGUFValueType.BOOL: writer.add_bool,
        }[kind](field.name, value)


def main(src, dst):
    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(dst, arch)
    for field in reader.fields.values():
        copy_field(writer, field)
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dims innermost first; numpy wants them outermost first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        writer.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
