import os, ray
from latentlm.platform.launch import init_ray
import latentlm.platform.config as c
init_ray()
@ray.remote(num_cpus=0)
def where():
    import os, latentlm.models.dit as d
    return d.__file__, os.getcwd()
print("DRIVER", c.__file__, os.getcwd())
print("WORKER", ray.get(where.remote()))
