"""LENS for ROS 2: an ament_python ROS 2 package and a pip-installable Python project."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lens_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Text-prompted segmentation with LENS (Qwen2.5-VL + SAM 2) for robots, with training code",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lens_model", "lens_model.*", "lens_ros", "lens_ros.*", "training", "training.*"]),
    include_package_data=True,
    package_data={"training": ["configs/*.yaml"], "lens_model": ["assets/*", "assets/**/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # Loose ranges for users; CI installs the exact pins in requirements.txt + constraints.txt.
    install_requires=[
        "torch>=2.5",
        "numpy>=1.24",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "huggingface_hub>=0.30",
        "pillow>=10",
        "opencv-python-headless>=4.8",
        "omegaconf>=2.3",
        "hydra-core>=1.3.8",  # imported by sam2 itself; LENS never instantiates through Hydra
        "iopath>=0.1.10",
        "tqdm>=4.60",
        "PyYAML>=6",
    ],
    extras_require={
        "train": ["deepspeed>=0.15", "tensorboard>=2.15", "pycocotools>=2.0.7", "peft>=0.13"],
        "ros": ["rosbags>=0.10", "cyclonedds>=0.10"],
        "test": ["pytest>=8", "hypothesis>=6"],
    },
    entry_points={
        "console_scripts": [
            "lens-segment = lens_model.cli:main",
            "lens_node = lens_ros.lens_node:main",
            "lens-bag = lens_ros.bag:main",
            "lens-dds-client = lens_ros.dds_client:main",
        ],
    },
    zip_safe=False,
)
