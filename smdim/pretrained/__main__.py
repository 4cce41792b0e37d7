from smdim.errors import run_stage
from smdim.pretrained import main

run_stage(main)
