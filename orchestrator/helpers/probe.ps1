<#
.SYNOPSIS
    keyfleet probe helper (keyfleet doctor): reports what this server offers, changes nothing.
.DESCRIPTION
    Sent after common.ps1 and conpty.ps1 as one script. -Params: tool_path; needs no secret.
    Reports the computer name, whether the WinRM user is a local administrator, every SCSM role and
    the version found in the registry, where SecureStorageBackup.exe is (tool_path, the install
    folder Setup recorded, each version's default folder) and its file version, the free space of
    the temporary folder, the PowerShell version and language mode, and the Windows build (a
    pseudo console needs 17763, Windows Server 2019, or later).
#>
$tool = Find-Tool
$toolVersion = $null
if ($tool) { $toolVersion = [Diagnostics.FileVersionInfo]::GetVersionInfo($tool).FileVersion }
$temp = [IO.Path]::GetTempPath()
$drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($temp))
return @{
    computer_name      = $env:COMPUTERNAME
    admin              = Test-Administrator
    roles              = Get-ScsmRoles
    version            = Get-ScsmVersion
    tool_path          = $tool
    tool_version       = $toolVersion
    tool_candidates    = Get-ToolCandidates
    temp_path          = $temp
    temp_free_bytes    = $drive.AvailableFreeSpace
    powershell_version = $PSVersionTable.PSVersion.ToString()
    os_build           = [Environment]::OSVersion.Version.Build
    helper_version     = $HelperVersion
}
