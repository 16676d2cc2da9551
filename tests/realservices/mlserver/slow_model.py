"""An MLServer model whose load() takes SLOW_LOAD_SECONDS (as a big model's does) and whose predict()
sums numeric inputs and upper-cases text ones (tests/realservices/test_realsvc_mlserver.py).

An input named `refuse` is refused as the model refuses bad input (MLServerError, 400); one named
`raise` fails as a bug does (ValueError, 500).
"""

import asyncio
import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse


class SlowModel(MLModel):
    async def load(self) -> bool:
        await asyncio.sleep(float(os.environ.get("SLOW_LOAD_SECONDS", "8")))
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = []
        for item in payload.inputs:
            if item.name == "raise":
                raise ValueError("kaboom")
            if item.name == "refuse":
                raise MLServerError("refused: bad input", status_code=400)
            if item.datatype == "BYTES":
                texts = StringCodec.decode_input(item)
                outputs.append(StringCodec.encode_output(f"{item.name}_upper", [t.upper() for t in texts]))
            else:
                values = NumpyCodec.decode_input(item)
                outputs.append(NumpyCodec.encode_output(f"{item.name}_sum", np.array([values.sum()])))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
