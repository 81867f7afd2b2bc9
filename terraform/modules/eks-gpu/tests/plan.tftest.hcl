# `terraform test` for the eks-gpu module. The AWS provider is mocked (its schema is real, nothing
# is called), so these plans run offline and without credentials.

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1d"] }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  cluster_name = "remora-test"
}

run "gpu_group_is_spot_tainted_and_scales_to_zero" {
  command = plan

  assert {
    condition     = aws_eks_node_group.gpu.capacity_type == "SPOT"
    error_message = "the GPU node group is not spot by default"
  }
  assert {
    condition     = aws_eks_node_group.gpu.scaling_config[0].min_size == 0 && aws_eks_node_group.gpu.scaling_config[0].desired_size == 0
    error_message = "the GPU node group does not start at zero"
  }
  assert {
    condition     = aws_eks_node_group.gpu.ami_type == "AL2023_x86_64_NVIDIA"
    error_message = "the GPU node group does not use the NVIDIA AMI"
  }
  assert {
    condition = anytrue([
      for t in aws_eks_node_group.gpu.taint : t.key == "nvidia.com/gpu" && t.effect == "NO_SCHEDULE"
    ])
    error_message = "the GPU nodes are not tainted nvidia.com/gpu:NoSchedule"
  }
  assert {
    condition     = aws_eks_node_group.system.capacity_type == "ON_DEMAND" && aws_eks_node_group.system.scaling_config[0].min_size >= 1
    error_message = "the system node group must be on demand and never empty"
  }
  assert {
    condition     = local.gpu_node_template_tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"
    error_message = "the cluster autoscaler is not told what an empty GPU group offers"
  }
  assert {
    condition     = local.gpu_node_template_tags["k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"] == "true:NoSchedule"
    error_message = "the autoscaler's node template lacks the GPU taint"
  }
}

run "creates_a_vpc_across_three_zones" {
  command = plan

  assert {
    condition     = length(aws_vpc.this) == 1 && length(aws_subnet.private) == 3 && length(aws_subnet.public) == 3
    error_message = "expected one VPC with three public and three private subnets"
  }
  assert {
    condition     = length(aws_nat_gateway.this) == 1
    error_message = "single_nat_gateway should create one NAT gateway"
  }
  assert {
    condition     = aws_subnet.private[0].cidr_block == "10.40.128.0/20" && aws_subnet.public[2].cidr_block == "10.40.32.0/20"
    error_message = "unexpected subnet layout"
  }
  assert {
    condition     = toset(aws_subnet.private[*].availability_zone) == toset(["eu-west-1a", "eu-west-1b", "eu-west-1c"])
    error_message = "the private subnets do not span the first three zones"
  }
}

run "nat_per_zone" {
  command = plan
  variables {
    single_nat_gateway = false
    availability_zones = ["us-east-1a", "us-east-1b"]
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 2 && length(aws_subnet.private) == 2
    error_message = "one NAT gateway per zone expected"
  }
}

run "existing_vpc_creates_no_network" {
  command = plan
  variables {
    existing_vpc = {
      vpc_id             = "vpc-0123456789abcdef0"
      private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
    }
  }

  assert {
    condition     = length(aws_vpc.this) == 0 && length(aws_subnet.private) == 0 && length(aws_nat_gateway.this) == 0
    error_message = "existing_vpc must not create network resources"
  }
  assert {
    condition     = toset(aws_eks_node_group.gpu.subnet_ids) == toset(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"])
    error_message = "the nodes do not use the given subnets"
  }
}

run "on_demand_gpus_with_a_floor" {
  command = plan
  variables {
    gpu_capacity_type = "ON_DEMAND"
    gpu_node_count    = { min = 1, max = 2 }
  }

  assert {
    condition     = aws_eks_node_group.gpu.capacity_type == "ON_DEMAND" && aws_eks_node_group.gpu.scaling_config[0].min_size == 1
    error_message = "gpu_capacity_type / gpu_node_count are not applied"
  }
}

run "rejects_a_bad_cluster_name" {
  command = plan
  variables {
    cluster_name = "Remora_Test"
  }
  expect_failures = [var.cluster_name]
}

run "rejects_an_unknown_gpu_ami" {
  command = plan
  variables {
    gpu_ami_type = "AL2023_x86_64_STANDARD"
  }
  expect_failures = [var.gpu_ami_type]
}

run "rejects_a_cpu_instance_in_the_gpu_group" {
  command = plan
  variables {
    gpu_instance_types = ["m6i.large"]
  }
  expect_failures = [var.gpu_instance_types]
}

run "rejects_inverted_gpu_bounds" {
  command = plan
  variables {
    gpu_node_count = { min = 3, max = 1 }
  }
  expect_failures = [var.gpu_node_count]
}

run "rejects_an_existing_vpc_with_one_subnet" {
  command = plan
  variables {
    existing_vpc = { vpc_id = "vpc-0123456789abcdef0", private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa"] }
  }
  expect_failures = [var.existing_vpc]
}

run "rejects_a_bad_capacity_type" {
  command = plan
  variables {
    gpu_capacity_type = "spot"
  }
  expect_failures = [var.gpu_capacity_type]
}
